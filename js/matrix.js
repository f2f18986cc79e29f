/* The matrix view: the selected head as a heatmap on canvas, query rows x key columns, weight under the pointer. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var MIN_SIZE = 480;
  var EXPORT_SIZE = 1200;
  var NONE_RGB = [243, 244, 246];   /* above the diagonal: no weight exists */
  var EXCLUDED_RGB = [226, 228, 232];  /* the first token, left out of the scale */
  var NONE_CSS = 'rgb(243, 244, 246)';
  var EXCLUDED_CSS = 'rgb(226, 228, 232)';

  ns.MatrixView = function (canvas, status, text) {
    this.canvas = canvas;
    this.status = status;
    this.text = text;
    this.source = null;
    this.levels = new Int16Array(0);
    this.sums = new Int32Array(text.tokens.length);
    this.bases = new Int32Array(text.tokens.length);
    this.line = new Int16Array(text.tokens.length);
    this.pending = null;
    this.listen();
  };

  var proto = ns.MatrixView.prototype;

  proto.listen = function () {
    var view = this;
    this.canvas.addEventListener('mousemove', function (event) { view.point(event); });
    this.canvas.addEventListener('mouseleave', function () { view.describe(-1, -1); });
  };

  /* Take a new section, head or scale. The canvas gets its size and the readout its source at once; the pixels
     are drawn in the next task, so the text views are interactive first (the matrix sits below them). */
  proto.setSource = function (source) {
    var layout = source.data.layout, tokens = layout.numTokens, rows = layout.rowCount;
    var scale = Math.max(1, Math.floor(MIN_SIZE / Math.max(tokens, rows)));
    this.source = source;
    if (this.canvas.width !== tokens || this.canvas.height !== rows) {
      this.canvas.width = tokens;
      this.canvas.height = rows;
    }
    this.canvas.style.width = tokens * scale + 'px';
    this.describe(-1, -1);
    var view = this;
    if (this.pending === null) this.pending = setTimeout(function () { view.flush(); }, 0);
  };

  /* Draw now if a drawing is pending (exports need the pixels and colour levels of the current source). */
  proto.flush = function () {
    if (this.pending === null) return;
    clearTimeout(this.pending);
    this.pending = null;
    this.draw();
  };

  /* Colour every held cell; cells above the diagonal and an excluded first token stay grey. Pixels are written
     as 32-bit words from a palette made once, so a 1,000-token matrix draws in a few milliseconds. */
  proto.draw = function () {
    var layout = this.source.data.layout, tokens = layout.numTokens, rows = layout.rowCount;
    if (this.levels.length !== rows * tokens) this.levels = new Int16Array(rows * tokens);
    var context = this.canvas.getContext('2d');
    var image = context.createImageData(tokens, rows), words = new Uint32Array(image.data.buffer);
    var palette = pixelPalette(), none = packPixel(NONE_RGB), excluded = packPixel(EXCLUDED_RGB);
    for (var r = 0; r < rows; r++) {
      this.computeRow(r);
      this.levels.set(this.line, r * tokens);
      var last = layout.causal ? Math.min(tokens - 1, layout.rowStart + r) : tokens - 1, offset = r * tokens;
      for (var k = 0; k <= last; k++) {
        var level = this.line[k];
        words[offset + k] = level < 0 ? excluded : palette[level];
      }
      for (k = last + 1; k < tokens; k++) words[offset + k] = none;
    }
    context.putImageData(image, 0, 0);
    this.canvas.setAttribute('data-drawn', 'true');
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

  /* Colour levels of held row r into this.line, scaled like the text views. */
  proto.computeRow = function (r) {
    var source = this.source, divisor = source.divisor, ignoreSink = source.options.ignoreSink;
    source.data.fillRow(source.slots, source.data.layout.rowStart + r, this.sums);
    this.bases.fill(ignoreSink ? divisor - this.sums[0] : divisor);
    ns.colourLevels(this.sums, this.bases, ignoreSink ? 0 : -1, source.options.rowMax, this.line);
  };

  /* The colour level of cell (r, k), or null above the diagonal. */
  proto.cellLevel = function (r, k) {
    var layout = this.source.data.layout;
    if (layout.causal && k > layout.rowStart + r) return null;
    return this.levels[r * layout.numTokens + k];
  };

  proto.point = function (event) {
    var rect = this.canvas.getBoundingClientRect(), layout = this.source.data.layout;
    var key = Math.floor((event.clientX - rect.left) / rect.width * layout.numTokens);
    var row = Math.floor((event.clientY - rect.top) / rect.height * layout.rowCount);
    this.describe(Math.min(row, layout.rowCount - 1), Math.min(key, layout.numTokens - 1));
  };

  /* The status line: the cell under the pointer, or what the matrix shows. */
  proto.describe = function (row, key) {
    var source = this.source, layout = source.data.layout, labels = this.text.labels;
    if (row < 0 || key < 0) {
      this.status.textContent = 'Point at a cell: query rows ' + layout.rowStart + '–' +
        (layout.rowStart + layout.rowCount - 1) + ' (top to bottom) × key tokens 0–' + (layout.numTokens - 1) + '.';
      return;
    }
    var query = layout.rowStart + row, sum = 0;
    for (var s = 0; s < source.slots.length; s++) sum += source.data.heads[source.slots[s]][row * layout.numTokens + key];
    var value = layout.causal && key > query ? 'none (a later token)' : (sum / source.divisor).toFixed(4);
    this.status.textContent = 'token ' + query + ' “' + labels[query] + '” → token ' + key + ' “' + labels[key] + '”: ' + value;
  };

  proto.exportPng = function (stem) {
    this.flush();
    ns.exportCanvasPng(this.canvas, ns.fileName(stem, 'png'), EXPORT_SIZE);
  };

  /* Save the heatmap as vector SVG: one rectangle per run of equally coloured cells, a caption above. */
  proto.exportSvg = function (stem, caption) {
    this.flush();
    var layout = this.source.data.layout, view = this, top = 28;
    var cell = Math.max(1, Math.floor(EXPORT_SIZE / Math.max(layout.numTokens, layout.rowCount)));
    var width = layout.numTokens * cell, svg = ns.createSvg(width, layout.rowCount * cell + top);
    ns.svgText(svg, 0, 18, caption, 14);
    ns.svgHeatmap(svg, 0, top, cell, layout.rowCount, layout.numTokens, function (r, k) {
      var level = view.cellLevel(r, k);
      return level === null ? NONE_CSS : level < 0 ? EXCLUDED_CSS : level > 0 ? ns.paletteCss[level] : null;
    });
    ns.exportSvg(svg, ns.fileName(stem, 'svg'));
  };
})(window.attReport);
