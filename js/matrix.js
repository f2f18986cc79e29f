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
    this.listen();
  };

  var proto = ns.MatrixView.prototype;

  proto.listen = function () {
    var view = this;
    this.canvas.addEventListener('mousemove', function (event) { view.point(event); });
    this.canvas.addEventListener('mouseleave', function () { view.describe(-1, -1); });
  };

  proto.setSource = function (source) {
    this.source = source;
    this.draw();
  };

  /* Colour every held cell; cells above the diagonal and an excluded first token stay grey. */
  proto.draw = function () {
    var layout = this.source.data.layout, tokens = layout.numTokens, rows = layout.rowCount;
    var scale = Math.max(1, Math.floor(MIN_SIZE / Math.max(tokens, rows)));
    this.canvas.width = tokens;
    this.canvas.height = rows;
    this.canvas.style.width = tokens * scale + 'px';
    if (this.levels.length !== rows * tokens) this.levels = new Int16Array(rows * tokens);
    var context = this.canvas.getContext('2d');
    var image = context.createImageData(tokens, rows);
    for (var r = 0; r < rows; r++) {
      this.computeRow(r);
      this.levels.set(this.line, r * tokens);
      for (var k = 0; k < tokens; k++) writePixel(image.data, 4 * (r * tokens + k), this.cellRgb(r, k));
    }
    context.putImageData(image, 0, 0);
    this.describe(-1, -1);
  };

  /* Colour levels of held row r into this.line, scaled like the text views. */
  proto.computeRow = function (r) {
    var source = this.source, divisor = source.divisor, ignoreSink = source.options.ignoreSink;
    source.data.fillRow(source.slots, source.data.layout.rowStart + r, this.sums);
    this.bases.fill(ignoreSink ? divisor - this.sums[0] : divisor);
    ns.colourLevels(this.sums, this.bases, ignoreSink ? 0 : -1, source.options.rowMax, this.line);
  };

  function writePixel(pixels, offset, rgb) {
    pixels[offset] = rgb[0];
    pixels[offset + 1] = rgb[1];
    pixels[offset + 2] = rgb[2];
    pixels[offset + 3] = 255;
  }

  var paletteRgbViews = [];

  /* The RGB triple of cell (r, k), as a shared array (no allocation per pixel). */
  proto.cellRgb = function (r, k) {
    var level = this.cellLevel(r, k);
    if (level === null) return NONE_RGB;
    if (level < 0) return EXCLUDED_RGB;
    if (!paletteRgbViews[level]) paletteRgbViews[level] = ns.paletteRgb.subarray(3 * level, 3 * level + 3);
    return paletteRgbViews[level];
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
    ns.exportCanvasPng(this.canvas, ns.fileName(stem, 'png'), EXPORT_SIZE);
  };

  /* Save the heatmap as vector SVG: one rectangle per run of equally coloured cells, a caption above. */
  proto.exportSvg = function (stem, caption) {
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
