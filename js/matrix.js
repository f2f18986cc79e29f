/* The matrix view: the selected head as a heatmap on canvas, query rows x key columns. The whole matrix is shown
   downsampled (each cell a block of tokens, coloured by its largest weight); the wheel, the zoom buttons and dragging
   move a region down to single tokens, labelled where they fit. The readout is always a stored weight. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var EXPORT_SIZE = 1200;
  var MARGIN_LEFT = 96;   /* room for query labels */
  var MARGIN_TOP = 72;    /* room for key labels */
  var MARGIN_RIGHT = 40;  /* room for the last key labels, which lean right */
  var MIN_SIDE = 200;
  var MAX_SIDE = 900;
  var MIN_CELLS = 8;      /* the deepest zoom shows this many tokens a side */
  var LABEL_PX = 12;      /* token labels are drawn once a cell is this many pixels */
  var LABEL_CHARS = 12;
  var FONT = '11px ui-monospace, monospace';
  var ROWS_PER_TASK = 2048;  /* query rows coloured per task while drawing (a few ms), so hovering stays smooth */
  var NONE = -2;          /* above the diagonal: no weight exists */
  var NONE_RGB = [243, 244, 246];
  var EXCLUDED_RGB = [226, 228, 232];  /* the first token, left out of the scale */
  var NONE_CSS = 'rgb(243, 244, 246)';
  var EXCLUDED_CSS = 'rgb(226, 228, 232)';

  /* `panel` holds canvas[data-matrix], canvas[data-matrix-overlay], [data-status="matrix"],
     [data-matrix-legend] and the [data-matrix-zoom] buttons. */
  ns.MatrixView = function (panel, text) {
    this.canvas = panel.querySelector('[data-matrix]');
    this.overlay = panel.querySelector('[data-matrix-overlay]');
    this.frame = this.canvas.parentElement;
    this.status = panel.querySelector('[data-status="matrix"]');
    this.legend = panel.querySelector('[data-matrix-legend]');
    this.panel = panel;
    this.text = text;
    this.source = null;
    this.region = null;
    this.bins = null;
    this.levels = new Int16Array(0);
    this.keys = new Int32Array(text.tokens.length);
    this.sums = new Int32Array(text.tokens.length);
    this.line = new Int16Array(text.tokens.length);
    this.job = null;
    this.pointer = null;
    this.drag = null;
    this.marks = { query: -1, key: -1 };  /* the tokens the text views show, marked on the overlay */
    this.onPick = null;  /* called with (query, key) when a cell is clicked */
    this.listen();
  };

  var proto = ns.MatrixView.prototype;

  proto.listen = function () {
    var view = this;
    this.canvas.addEventListener('mousemove', function (event) { view.onMove(event); });
    this.canvas.addEventListener('mouseleave', function () {
      view.pointer = null;
      view.drag = null;
      view.describe();
      view.drawOverlay();
    });
    this.canvas.addEventListener('mousedown', function (event) {
      view.drag = { x: event.clientX, y: event.clientY, region: Object.assign({}, view.region) };
      event.preventDefault();
    });
    window.addEventListener('mouseup', function (event) {
      var drag = view.drag;
      view.drag = null;
      if (drag && view.pointer && view.onPick && Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) < 4) {
        view.pick();
      }
    });
    this.canvas.addEventListener('wheel', function (event) {
      if (!view.source) return;
      event.preventDefault();
      var rect = view.canvas.getBoundingClientRect();
      view.zoomAt((event.clientX - rect.left) / rect.width, (event.clientY - rect.top) / rect.height, event.deltaY < 0 ? 0.5 : 2);
    }, { passive: false });
    this.panel.addEventListener('click', function (event) {
      var button = event.target.closest('[data-matrix-zoom]');
      if (!button || !view.source) return;
      var how = button.getAttribute('data-matrix-zoom');
      if (how === 'whole') view.setRegion(view.wholeRegion()); else view.zoomAt(0.5, 0.5, how === 'in' ? 0.5 : 2);
    });
    window.addEventListener('resize', function () { if (view.source) view.setRegion(view.region); });
  };

  /* Take a new section, head or scale; a new section starts from the whole matrix. The readout works at once; the
     pixels are drawn in later tasks, so the text views are interactive first. */
  proto.setSource = function (source) {
    var same = this.source && this.source.data === source.data;
    this.source = source;
    this.setRegion(same ? this.region : this.wholeRegion());
  };

  proto.wholeRegion = function () {
    var layout = this.source.data.layout;
    return { row: 0, rows: layout.rowCount, key: 0, keys: layout.numTokens };
  };

  /* Zoom by `factor` (0.5 in, 2 out) keeping the point at fractions (fx, fy) of the view where it is. */
  proto.zoomAt = function (fx, fy, factor) {
    var layout = this.source.data.layout, region = this.region;
    var keys = clamp(Math.round(region.keys * factor), Math.min(MIN_CELLS, layout.numTokens), layout.numTokens);
    var rows = clamp(Math.round(region.rows * factor), Math.min(MIN_CELLS, layout.rowCount), layout.rowCount);
    this.setRegion({
      key: Math.round(region.key + fx * region.keys - fx * keys), keys: keys,
      row: Math.round(region.row + fy * region.rows - fy * rows), rows: rows
    });
  };

  function clamp(value, low, high) {
    return Math.max(low, Math.min(high, value));
  }

  /* Show `region` (held rows row.., keys key..), kept inside the matrix: size the canvases, then draw. */
  proto.setRegion = function (region) {
    var layout = this.source.data.layout;
    region.key = clamp(region.key, 0, layout.numTokens - region.keys);
    region.row = clamp(region.row, 0, layout.rowCount - region.rows);
    this.region = region;
    var side = this.side(), longest = Math.max(region.keys, region.rows);
    var bins = { keys: Math.min(region.keys, side), rows: Math.min(region.rows, side) };
    bins.width = Math.max(1, Math.round(side * region.keys / longest));
    bins.height = Math.max(1, Math.round(side * region.rows / longest));
    bins.keySize = Math.ceil(region.keys / bins.keys);
    bins.rowSize = Math.ceil(region.rows / bins.rows);
    this.bins = bins;
    this.canvas.width = bins.keys;
    this.canvas.height = bins.rows;
    this.canvas.style.width = bins.width + 'px';
    this.canvas.style.height = bins.height + 'px';
    this.canvas.style.left = MARGIN_LEFT + 'px';
    this.canvas.style.top = MARGIN_TOP + 'px';
    this.frame.style.width = MARGIN_LEFT + bins.width + MARGIN_RIGHT + 'px';
    this.frame.style.height = MARGIN_TOP + bins.height + 'px';
    var first = layout.rowStart + region.row;
    this.canvas.setAttribute('data-region', [first, first + region.rows - 1, region.key, region.key + region.keys - 1].join(' '));
    this.canvas.setAttribute('data-cell-tokens', bins.keySize + ' ' + bins.rowSize);
    this.legend.textContent = bins.keySize === 1 && bins.rowSize === 1
      ? 'Each cell is one query token × one key token.'
      : 'Each cell: up to ' + bins.rowSize + ' query × ' + bins.keySize + ' key tokens, coloured by its largest weight.';
    this.pointer = null;
    this.describe();
    this.drawOverlay();
    this.startDrawing();
  };

  /* The longer side of the heatmap in CSS pixels: the panel's width, at most 70% of the window's height. */
  proto.side = function () {
    var width = (this.frame.parentElement.clientWidth || 480 + MARGIN_LEFT) - MARGIN_LEFT - MARGIN_RIGHT;
    var height = (window.innerHeight || 800) * 0.7 - MARGIN_TOP;
    return Math.floor(clamp(Math.min(width, height), MIN_SIDE, MAX_SIDE));
  };

  /* The first item of bin i of `count` bins over `items` items from `start`. */
  function binStart(start, items, count, i) {
    return start + Math.floor(i * items / count);
  }

  /* Begin colouring the region's cells, a slice of rows per task; an older drawing stops. */
  proto.startDrawing = function () {
    var bins = this.bins, region = this.region;
    if (this.levels.length !== bins.rows * bins.keys) this.levels = new Int16Array(bins.rows * bins.keys);
    var keyBin = new Int32Array(region.keys);
    for (var j = 0; j < bins.keys; j++) {
      for (var k = binStart(0, region.keys, bins.keys, j); k < binStart(0, region.keys, bins.keys, j + 1); k++) keyBin[k] = j;
    }
    this.canvas.removeAttribute('data-drawn');
    if (this.job && this.job.timer !== null) clearTimeout(this.job.timer);
    this.job = { bin: 0, keyBin: keyBin, timer: null, image: this.canvas.getContext('2d').createImageData(bins.keys, bins.rows) };
    this.job.perTask = Math.max(1, Math.floor(ROWS_PER_TASK / bins.rowSize));
    this.schedule();
  };

  proto.schedule = function () {
    var view = this, job = this.job;
    job.timer = setTimeout(function () {
      job.timer = null;
      if (view.job === job && view.drawBins(job.perTask)) view.schedule();
    }, 0);
  };

  /* Draw now whatever is left (exports need the pixels and levels of the current source). */
  proto.flush = function () {
    if (!this.job) return;
    if (this.job.timer !== null) clearTimeout(this.job.timer);
    this.job.timer = null;
    this.drawBins(Infinity);
  };

  /* Colour up to `count` more bin rows; put the pixels; say whether rows are left. A cell's level is the largest of
     its held cells' levels (0 where all are zero, NONE where all lie above the diagonal); only non-zero weights are
     visited, so the whole matrix at 8k tokens colours in a few hundred milliseconds. */
  proto.drawBins = function (count) {
    var job = this.job, bins = this.bins, region = this.region, layout = this.source.data.layout;
    var words = new Uint32Array(job.image.data.buffer), palette = pixelPalette();
    var none = packPixel(NONE_RGB), excluded = packPixel(EXCLUDED_RGB), keyBin = job.keyBin, levels = this.levels;
    var sinkAlone = this.source.options.ignoreSink && region.key === 0 && (keyBin.length === 1 || keyBin[1] !== keyBin[0]);
    var end = Math.min(bins.rows, job.bin + count), keyEnd = region.key + region.keys;
    for (var i = job.bin; i < end; i++) {
      var offset = i * bins.keys, rowEnd = binStart(region.row, region.rows, bins.rows, i + 1);
      /* cells up to the last row's diagonal hold weights; a sink column left out of the scale shows as excluded */
      var lastKey = layout.causal ? Math.min(keyEnd - 1, layout.rowStart + rowEnd - 1) : keyEnd - 1;
      for (var j = 0; j < bins.keys; j++) {
        levels[offset + j] = binStart(region.key, region.keys, bins.keys, j) <= lastKey ? 0 : NONE;
      }
      if (sinkAlone) levels[offset] = -1;
      for (var r = binStart(region.row, region.rows, bins.rows, i); r < rowEnd; r++) {
        var n = this.rowLevels(r);
        for (var e = 0; e < n; e++) {
          var key = this.keys[e] - region.key;
          if (key < 0 || key >= region.keys || this.line[e] < 0) continue;
          var at = offset + keyBin[key];
          if (this.line[e] > levels[at]) levels[at] = this.line[e];
        }
      }
      for (j = 0; j < bins.keys; j++) {
        var value = levels[offset + j];
        words[offset + j] = value === NONE ? none : value < 0 ? excluded : palette[value];
      }
    }
    job.bin = end;
    this.canvas.getContext('2d').putImageData(job.image, 0, 0);
    if (end < bins.rows) return true;
    this.job = null;
    this.canvas.setAttribute('data-drawn', 'true');
    return false;
  };

  var pixelWords = null;

  /* One RGBA pixel as the 32-bit word ImageData holds (little-endian byte order on every browser platform). */
  function packPixel(rgb) {
    return ((255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
  }

  function pixelPalette() {
    if (!pixelWords) {
      pixelWords = new Uint32Array(ns.COLOUR_LEVELS + 1);
      for (var level = 0; level <= ns.COLOUR_LEVELS; level++) {
        pixelWords[level] = packPixel(ns.paletteRgb.subarray(3 * level, 3 * level + 3));
      }
    }
    return pixelWords;
  }

  /* The non-zero weights of held row r: keys into this.keys, sums into this.sums, colour levels into this.line
     (scaled like the text views; -1 for a first token left out); returns how many. */
  proto.rowLevels = function (r) {
    var source = this.source, divisor = source.divisor, options = source.options;
    var n = source.data.rowEntries(source.slots, r, this.keys, this.sums), sink = 0, e;
    if (options.ignoreSink) for (e = 0; e < n; e++) if (this.keys[e] === 0) sink = this.sums[e];
    var base = options.ignoreSink ? divisor - sink : divisor, top = 0;
    if (options.rowMax) {
      for (e = 0; e < n; e++) if (!(options.ignoreSink && this.keys[e] === 0) && this.sums[e] > top) top = this.sums[e];
    }
    var scale = options.rowMax ? (top || 1) : base;
    for (e = 0; e < n; e++) {
      this.line[e] = options.ignoreSink && this.keys[e] === 0 ? -1 : base > 0 ? ns.colourLevel(this.sums[e] / scale, options.log) : 0;
    }
    return n;
  };

  /* The bin (i, j) under the pointer, and drag to pan. */
  proto.onMove = function (event) {
    if (!this.source) return;
    var rect = this.canvas.getBoundingClientRect(), bins = this.bins, region = this.region;
    if (this.drag && event.buttons & 1) {
      var from = this.drag.region;
      var key = clamp(from.key - Math.round((event.clientX - this.drag.x) / rect.width * from.keys), 0, this.source.data.layout.numTokens - from.keys);
      var row = clamp(from.row - Math.round((event.clientY - this.drag.y) / rect.height * from.rows), 0, this.source.data.layout.rowCount - from.rows);
      if (key !== region.key || row !== region.row) this.setRegion({ key: key, keys: from.keys, row: row, rows: from.rows });
    }
    this.pointer = {
      i: clamp(Math.floor((event.clientY - rect.top) / rect.height * bins.rows), 0, bins.rows - 1),
      j: clamp(Math.floor((event.clientX - rect.left) / rect.width * bins.keys), 0, bins.keys - 1)
    };
    this.describe();
    this.drawOverlay();
  };

  /* Hand the pointed cell (a block's largest) to onPick, as query and key token indices. */
  proto.pick = function () {
    var best = this.binMax(this.pointer.i, this.pointer.j);
    if (best) this.onPick(this.source.data.layout.rowStart + best.row, best.key);
  };

  /* Mark the token a text view shows: `kind` 'query' (the observer's row) or 'key' (the observed view's column). */
  proto.mark = function (kind, index) {
    this.marks[kind] = index;
    if (this.source) this.drawOverlay();
  };

  /* The held rows and keys of bin (i, j): [first, end). */
  proto.binCells = function (i, j) {
    var bins = this.bins, region = this.region;
    return {
      row: binStart(region.row, region.rows, bins.rows, i), rowEnd: binStart(region.row, region.rows, bins.rows, i + 1),
      key: binStart(region.key, region.keys, bins.keys, j), keyEnd: binStart(region.key, region.keys, bins.keys, j + 1)
    };
  };

  /* The largest stored weight in bin (i, j) and its cell (the first held one when all are zero), or null when every
     cell lies above the diagonal. */
  proto.binMax = function (i, j) {
    var cells = this.binCells(i, j), source = this.source, layout = source.data.layout;
    var last = layout.causal ? Math.min(cells.keyEnd - 1, layout.rowStart + cells.rowEnd - 1) : cells.keyEnd - 1;
    if (last < cells.key) return null;
    var firstRow = layout.causal ? Math.max(cells.row, cells.key - layout.rowStart) : cells.row;
    var best = { sum: 0, row: firstRow, key: cells.key };
    for (var r = firstRow; r < cells.rowEnd; r++) {
      var n = source.data.rowEntries(source.slots, r, this.keys, this.sums);
      for (var e = 0; e < n; e++) {
        var key = this.keys[e];
        if (key >= cells.key && key < cells.keyEnd && this.sums[e] > best.sum) best = { sum: this.sums[e], row: r, key: key };
      }
    }
    return best;
  };

  /* The status line: the cell or block under the pointer, or what the matrix shows. The status element carries
     data-query, data-key and data-weight of the weight it names. */
  proto.describe = function () {
    var status = this.status, layout = this.source.data.layout, region = this.region;
    ['data-query', 'data-key', 'data-weight'].forEach(function (name) { status.removeAttribute(name); });
    if (!this.pointer) {
      var first = layout.rowStart + region.row;
      status.textContent = 'Point at a cell: query tokens ' + first + '–' + (first + region.rows - 1) +
        ' (top to bottom) × key tokens ' + region.key + '–' + (region.key + region.keys - 1) +
        '. Wheel or buttons zoom, drag pans.';
      return;
    }
    var cells = this.binCells(this.pointer.i, this.pointer.j), best = this.binMax(this.pointer.i, this.pointer.j);
    var single = cells.rowEnd - cells.row === 1 && cells.keyEnd - cells.key === 1;
    var query = layout.rowStart + cells.row;
    var line = single ? ''
      : 'tokens ' + query + '–' + (layout.rowStart + cells.rowEnd - 1) + ' → tokens ' + cells.key + '–' + (cells.keyEnd - 1) + ': ';
    if (!best) {
      status.textContent = single
        ? this.pair(query, cells.key) + ': none (a later token)'
        : line + 'none (later tokens)';
      return;
    }
    var weight = best.sum / this.source.divisor;
    status.setAttribute('data-query', String(layout.rowStart + best.row));
    status.setAttribute('data-key', String(best.key));
    status.setAttribute('data-weight', ns.weightTexts(this.source.divisor)[best.sum]);
    status.textContent = single
      ? this.pair(query, cells.key) + ': ' + weight.toFixed(4)
      : line + 'largest ' + weight.toFixed(4) + ', ' + this.pair(layout.rowStart + best.row, best.key);
  };

  proto.pair = function (query, key) {
    var labels = this.text.labels;
    return 'token ' + query + ' “' + labels[query] + '” → token ' + key + ' “' + labels[key] + '”';
  };

  /* The overlay: token labels (or the region's first and last index) and the crosshair on the pointed cell. */
  proto.drawOverlay = function () {
    var bins = this.bins, dpr = window.devicePixelRatio || 1, overlay = this.overlay;
    var width = MARGIN_LEFT + bins.width + MARGIN_RIGHT, height = MARGIN_TOP + bins.height;
    if (overlay.width !== Math.round(width * dpr) || overlay.height !== Math.round(height * dpr)) {
      overlay.width = Math.round(width * dpr);
      overlay.height = Math.round(height * dpr);
      overlay.style.width = width + 'px';
      overlay.style.height = height + 'px';
    }
    var context = overlay.getContext('2d');
    context.setTransform(dpr, 0, 0, dpr, 0, 0);
    context.clearRect(0, 0, width, height);
    context.fillStyle = '#5b6470';
    var cellW = bins.width / bins.keys, cellH = bins.height / bins.rows, pointer = this.pointer;
    var labelled = bins.keySize === 1 && bins.rowSize === 1 && Math.min(cellW, cellH) >= LABEL_PX;
    if (labelled) this.drawLabels(context, cellW, cellH); else this.drawTicks(context);
    this.drawMarks(context, cellW, cellH);
    if (!pointer) return;
    context.strokeStyle = 'rgba(11, 61, 145, 0.75)';
    context.lineWidth = 1;
    var x = MARGIN_LEFT + pointer.j * cellW, y = MARGIN_TOP + pointer.i * cellH;
    context.beginPath();
    context.moveTo(MARGIN_LEFT - 2, y + cellH / 2);
    context.lineTo(MARGIN_LEFT + bins.width, y + cellH / 2);
    context.moveTo(x + cellW / 2, MARGIN_TOP - 2);
    context.lineTo(x + cellW / 2, height);
    context.stroke();
    context.lineWidth = 2;
    context.strokeRect(x - 1, y - 1, cellW + 2, cellH + 2);
  };

  /* A line along the row of the observer's token and the column of the observed view's, where they are shown. */
  proto.drawMarks = function (context, cellW, cellH) {
    var bins = this.bins, region = this.region, first = this.source.data.layout.rowStart + region.row;
    var row = this.marks.query - first, key = this.marks.key - region.key;
    context.fillStyle = 'rgba(232, 163, 61, 0.55)';
    if (this.marks.query >= 0 && row >= 0 && row < region.rows) {
      var i = Math.floor(row * bins.rows / region.rows);
      context.fillRect(MARGIN_LEFT - 6, MARGIN_TOP + i * cellH + cellH / 2 - 1, bins.width + 6, 2);
    }
    if (this.marks.key >= 0 && key >= 0 && key < region.keys) {
      var j = Math.floor(key * bins.keys / region.keys);
      context.fillRect(MARGIN_LEFT + j * cellW + cellW / 2 - 1, MARGIN_TOP - 6, 2, bins.height + 6);
    }
    context.fillStyle = '#5b6470';
  };

  /* Every shown token's index and label along both axes, the pointed row's and column's in bold. */
  proto.drawLabels = function (context, cellW, cellH) {
    var bins = this.bins, pointer = this.pointer, first = this.source.data.layout.rowStart + this.region.row, i;
    context.textAlign = 'right';
    context.textBaseline = 'middle';
    for (i = 0; i < bins.rows; i++) {
      context.font = (pointer && pointer.i === i ? 'bold ' : '') + FONT;
      context.fillText((first + i) + ' ' + this.label(first + i), MARGIN_LEFT - 4, MARGIN_TOP + (i + 0.5) * cellH, MARGIN_LEFT - 6);
    }
    context.textAlign = 'left';
    for (i = 0; i < bins.keys; i++) {
      var key = this.region.key + i;
      context.save();
      context.translate(MARGIN_LEFT + (i + 0.5) * cellW, MARGIN_TOP - 4);
      context.rotate(-Math.PI / 3);
      context.font = (pointer && pointer.j === i ? 'bold ' : '') + FONT;
      context.fillText(key + ' ' + this.label(key), 0, 0, MARGIN_TOP * 1.1);
      context.restore();
    }
  };

  /* The first and last token index of each axis of the region, at its corners. */
  proto.drawTicks = function (context) {
    var bins = this.bins, region = this.region, first = this.source.data.layout.rowStart + region.row;
    context.font = FONT;
    context.textBaseline = 'top';
    context.textAlign = 'right';
    context.fillText(String(first), MARGIN_LEFT - 4, MARGIN_TOP);
    context.textBaseline = 'bottom';
    context.fillText(String(first + region.rows - 1), MARGIN_LEFT - 4, MARGIN_TOP + bins.height);
    context.fillText('key ' + (region.key + region.keys - 1), MARGIN_LEFT + bins.width, MARGIN_TOP - 4);
    context.textAlign = 'left';
    context.fillText('key ' + region.key, MARGIN_LEFT, MARGIN_TOP - 4);
    context.save();
    context.translate(MARGIN_LEFT - 8, MARGIN_TOP + bins.height / 2);
    context.rotate(-Math.PI / 2);
    context.textAlign = 'center';
    context.fillText('query', 0, 0);
    context.restore();
  };

  /* A token's label, cut to fit the margin. */
  proto.label = function (index) {
    var label = this.text.labels[index];
    return label.length > LABEL_CHARS ? label.slice(0, LABEL_CHARS - 1) + '…' : label;
  };

  proto.exportPng = function (stem) {
    this.flush();
    ns.exportCanvasPng(this.canvas, ns.fileName(stem, 'png'), EXPORT_SIZE);
  };

  /* Save the shown cells as vector SVG: one rectangle per run of equally coloured cells, a caption above. */
  proto.exportSvg = function (stem, caption) {
    this.flush();
    var bins = this.bins, view = this, top = 28;
    var cell = Math.max(1, Math.floor(EXPORT_SIZE / Math.max(bins.keys, bins.rows)));
    var svg = ns.createSvg(bins.keys * cell, bins.rows * cell + top);
    ns.svgText(svg, 0, 18, caption + ' · ' + this.canvas.getAttribute('data-region'), 14);
    ns.svgHeatmap(svg, 0, top, cell, bins.rows, bins.keys, function (i, j) {
      var level = view.levels[i * bins.keys + j];
      return level === NONE ? NONE_CSS : level < 0 ? EXCLUDED_CSS : level > 0 ? ns.paletteCss[level] : null;
    });
    ns.exportSvg(svg, ns.fileName(stem, 'svg'));
  };
})(window.attReport);
