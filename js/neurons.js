/* The neurons page: a unit x token heatmap per layer (diverging colours) and the text coloured by one unit. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var NEGATIVE = [37, 99, 235];
  var POSITIVE = [220, 38, 38];
  var CELL_HEIGHT = 14;

  /* The RGB of a value in -1..1: white at 0, blue below, red above. */
  function diverging(share) {
    var end = share < 0 ? NEGATIVE : POSITIVE, t = Math.min(1, Math.abs(share));
    return [0, 1, 2].map(function (c) { return Math.round(255 + (end[c] - 255) * t); });
  }

  ns.NeuronPage = function (root, data, bytes) {
    this.root = root;
    this.data = data;
    this.bytes = bytes;
    this.tokens = data.tokens.length;
    this.k = data.units[0].length;
    this.layer = 0;
    this.unit = 0;
    this.canvas = root.querySelector('[data-neuron-map]');
    this.status = root.querySelector('[data-status="neurons"]');
    this.textStatus = root.querySelector('[data-status="neuron-text"]');
    this.unitSelect = root.querySelector('[data-neuron-unit]');
    this.elements = ns.buildTokens(root.querySelector('[data-neuron-text]'), data);
    this.listen();
  };

  var proto = ns.NeuronPage.prototype;

  /* The captured value (within the stated bound) of unit slot k of the layer at token i. */
  proto.value = function (k, i) {
    var q = this.bytes[(this.layer * this.k + k) * this.tokens + i] - this.data.levels;
    return q / this.data.levels * this.data.scales[this.layer][k];
  };

  proto.showLayer = function (layer) {
    this.layer = layer;
    var units = this.data.units[layer], select = this.unitSelect;
    select.textContent = '';
    units.forEach(function (unit, k) {
      var option = document.createElement('option');
      option.value = String(k);
      option.textContent = 'unit ' + unit;
      select.appendChild(option);
    });
    this.draw();
    this.showUnit(0);
    document.body.setAttribute('data-shown-layer', String(layer));  /* not data-neuron-layer: that names the select */
  };

  proto.draw = function () {
    var canvas = this.canvas, width = this.tokens, height = this.k;
    canvas.width = width;
    canvas.height = height;
    canvas.style.width = Math.min(1200, Math.max(width * 4, 240)) + 'px';
    canvas.style.height = height * CELL_HEIGHT + 'px';
    var context = canvas.getContext('2d'), image = context.createImageData(width, height);
    for (var k = 0; k < height; k++) {
      var scale = this.data.scales[this.layer][k] || 1;
      for (var i = 0; i < width; i++) {
        var offset = 4 * (k * width + i);
        image.data.set(diverging(this.value(k, i) / scale), offset);
        image.data[offset + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
  };

  /* Colour the text by unit slot k; each token carries its value as data-value. */
  proto.showUnit = function (k) {
    this.unit = k;
    this.unitSelect.value = String(k);
    var scale = this.data.scales[this.layer][k] || 1;
    for (var i = 0; i < this.tokens; i++) {
      var value = this.value(k, i), rgb = diverging(value / scale);
      this.elements[i].setAttribute('data-value', String(value));
      this.elements[i].style.backgroundColor = 'rgb(' + rgb.join(', ') + ')';
    }
    this.textStatus.textContent = 'Layer ' + this.layer + ', unit ' + this.data.units[this.layer][k] + '. Hover a token.';
  };

  proto.cellAt = function (event) {
    var rect = this.canvas.getBoundingClientRect();
    return {
      i: Math.min(this.tokens - 1, Math.floor((event.clientX - rect.left) / rect.width * this.tokens)),
      k: Math.min(this.k - 1, Math.floor((event.clientY - rect.top) / rect.height * this.k))
    };
  };

  proto.describe = function (k, i) {
    return 'layer ' + this.layer + ' · unit ' + this.data.units[this.layer][k] + ' · token ' + i + ' “' +
      this.data.labels[i] + '”: ' + this.value(k, i).toFixed(4);
  };

  proto.listen = function () {
    var page = this;
    this.canvas.addEventListener('mousemove', function (event) {
      var cell = page.cellAt(event);
      page.status.textContent = page.describe(cell.k, cell.i);
    });
    this.canvas.addEventListener('click', function (event) { page.showUnit(page.cellAt(event).k); });
    this.root.querySelector('[data-neuron-layer]').addEventListener('change', function (event) {
      page.showLayer(Number(event.target.value));
    });
    this.unitSelect.addEventListener('change', function (event) { page.showUnit(Number(event.target.value)); });
    this.root.querySelector('[data-neuron-text]').addEventListener('mouseover', function (event) {
      var token = event.target.closest('[data-index]');
      if (token) page.textStatus.textContent = page.describe(page.unit, Number(token.getAttribute('data-index')));
    });
  };

  document.addEventListener('DOMContentLoaded', async function () {
    var root = document.querySelector('[data-neurons]');
    if (!root) return;
    var data = ns.expandTokenData(JSON.parse(document.getElementById('att-data').textContent));
    var bytes = await ns.inflate(ns.base64ToBytes(document.getElementById('att-neurons').textContent.trim()));
    ns.neurons = new ns.NeuronPage(root, data, bytes);
    ns.neurons.showLayer(0);
    document.body.setAttribute('data-ready', 'true');
  });
})(window.attReport);
