/* The index grid: draw every head's thumbnail from the packed payload; save the whole grid as PNG or SVG. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var GAP = 6;
  var LABEL = 64;
  var HEADER = 22;
  var SCALE = 2;

  ns.IndexGrid = function (root, meta, bytes) {
    this.root = root;
    this.size = meta.thumbSize;
    this.layers = meta.layers;
    this.heads = meta.heads;
    this.bytes = bytes;
    this.labels = Array.prototype.map.call(root.querySelectorAll('thead th[scope="col"]'), function (th) {
      return th.textContent.trim();
    });
  };

  var proto = ns.IndexGrid.prototype;

  /* The colour of byte b of thumbnail k as a palette level. */
  proto.level = function (k, cell) {
    return Math.round(this.bytes[k * this.size * this.size + cell] / ns.QUANT_LEVELS * ns.COLOUR_LEVELS);
  };

  proto.draw = function () {
    var grid = this, size = this.size;
    this.root.querySelectorAll('canvas[data-thumb]').forEach(function (canvas) {
      var k = Number(canvas.getAttribute('data-thumb'));
      canvas.width = size;
      canvas.height = size;
      var context = canvas.getContext('2d'), image = context.createImageData(size, size);
      for (var cell = 0; cell < size * size; cell++) {
        var level = grid.level(k, cell);
        image.data.set(ns.paletteRgb.subarray(3 * level, 3 * level + 3), 4 * cell);
        image.data[4 * cell + 3] = 255;
      }
      context.putImageData(image, 0, 0);
    });
  };

  /* Where thumbnail (layer, head) goes in an exported picture. */
  proto.origin = function (layer, head) {
    var step = this.size * SCALE + GAP;
    return { x: LABEL + head * step, y: HEADER + layer * step };
  };

  proto.exportSize = function () {
    var step = this.size * SCALE + GAP;
    return { width: LABEL + this.heads * step, height: HEADER + this.layers * step };
  };

  proto.exportPng = function () {
    var size = this.exportSize(), canvas = document.createElement('canvas'), grid = this;
    canvas.width = size.width;
    canvas.height = size.height;
    var context = canvas.getContext('2d');
    context.fillStyle = '#ffffff';
    context.fillRect(0, 0, size.width, size.height);
    context.imageSmoothingEnabled = false;
    context.fillStyle = '#1b1f24';
    context.font = '11px sans-serif';
    var thumbs = this.root.querySelectorAll('canvas[data-thumb]');
    for (var head = 0; head < this.heads; head++) context.fillText('h' + head, this.origin(0, head).x, HEADER - 8);
    for (var layer = 0; layer < this.layers; layer++) {
      context.fillText('layer ' + layer, 2, this.origin(layer, 0).y + this.size * SCALE / 2 + 4);
      for (head = 0; head < this.heads; head++) {
        var at = this.origin(layer, head);
        context.drawImage(thumbs[layer * grid.heads + head], at.x, at.y, this.size * SCALE, this.size * SCALE);
      }
    }
    canvas.toBlob(function (blob) { ns.download(blob, 'attention-grid.png'); }, 'image/png');
  };

  proto.exportSvg = function () {
    var size = this.exportSize(), svg = ns.createSvg(size.width, size.height), grid = this, n = this.size;
    for (var head = 0; head < this.heads; head++) ns.svgText(svg, this.origin(0, head).x, HEADER - 8, this.labels[head] || 'h' + head, 10);
    for (var layer = 0; layer < this.layers; layer++) {
      ns.svgText(svg, 2, this.origin(layer, 0).y + n * SCALE / 2 + 4, 'layer ' + layer, 11);
      for (head = 0; head < this.heads; head++) {
        var at = this.origin(layer, head), k = layer * this.heads + head;
        ns.svgHeatmap(svg, at.x, at.y, SCALE, n, n, function (r, c) {
          var level = grid.level(k, r * n + c);
          return level > 0 ? ns.paletteCss[level] : null;
        });
      }
    }
    ns.exportSvg(svg, 'attention-grid.svg');
  };

  /* Hover a completion token (or its strip cell, or a [MASK]) to read its probability and the likeliest alternatives. */
  ns.TokenDetails = function (details, line) {
    this.details = details;
    this.line = line;
    this.marked = [];
    var view = this;
    document.addEventListener('mouseover', function (event) {
      var token = event.target.closest('[data-index-text] [data-index], [data-confidence-strip] [data-index]');
      if (token) view.show(token.getAttribute('data-index'));
    });
  };

  ns.TokenDetails.prototype.show = function (index) {
    var detail = this.details[index];
    this.marked.forEach(function (element) { element.classList.remove('att-shown'); });
    this.marked = Array.prototype.slice.call(document.querySelectorAll(
      '[data-index-text] [data-index="' + index + '"], [data-confidence-strip] [data-index="' + index + '"]'));
    if (!detail) {
      this.line.textContent = 'token ' + index + ': no probabilities here (completion tokens and masked positions carry them).';
      this.line.removeAttribute('data-shown-index');
      return;
    }
    this.marked.forEach(function (element) { element.classList.add('att-shown'); });
    var line = this.line;
    line.textContent = 'token ' + index + ': ' + detail.heading + ' ';
    detail.alternatives.forEach(function (pair) {
      var item = document.createElement('span');
      item.className = 'att-alt';
      item.textContent = '“' + pair[0] + '” ' + pair[1];
      line.appendChild(item);
    });
    line.setAttribute('data-shown-index', index);
  };

  async function start() {
    var data = document.getElementById('att-index-data');
    if (!data) return;
    var meta = JSON.parse(data.textContent);
    ns.details = new ns.TokenDetails(meta.details, document.querySelector('[data-token-details]'));
    /* The grid may sit on a page of its own (grid.html) when the index would exceed the size budget. */
    var root = document.querySelector('[data-grid]'), payload = document.getElementById('att-thumbnails');
    if (!root || !payload) return;
    var bytes = await ns.inflate(ns.base64ToBytes(payload.textContent.trim()));
    ns.grid = new ns.IndexGrid(root, meta, bytes);
    ns.grid.draw();
    document.addEventListener('click', function (event) {
      var button = event.target.closest('[data-grid-export]');
      if (!button) return;
      if (button.getAttribute('data-grid-export') === 'png') ns.grid.exportPng(); else ns.grid.exportSvg();
    });
    document.body.setAttribute('data-grid-ready', 'true');
  }

  document.addEventListener('DOMContentLoaded', start);
})(window.attReport);
