/* The neurons page (a report's or a comparison's): per layer a unit x token heatmap in diverging colours, the text
   coloured by one unit, the values under the pointer, and where the page has them, per-layer notes and unit tables.
   Per layer any number of units; one or more series of values per unit (the first drawn, all read out). */
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

  /* WCAG relative luminance of an sRGB colour [r, g, b] in 0..255. */
  function luminance(rgb) {
    var linear = rgb.map(function (c) {
      c /= 255;
      return c <= 0.04045 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2];
  }

  function contrast(a, b) {
    var x = luminance(a), y = luminance(b);
    return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05);
  }

  /* The text colour for a token on `background`: its own (`preferred`) while that stays readable (WCAG AA, 4.5:1),
     else black or white, whichever contrasts more (at least 4.58:1 on any background). */
  ns.readableInk = function (background, preferred) {
    if (contrast(preferred, background) >= 4.5) return preferred;
    return contrast([0, 0, 0], background) >= contrast([255, 255, 255], background) ? [0, 0, 0] : [255, 255, 255];
  };

  function parseRgb(css) {
    return css.match(/\d+/g).slice(0, 3).map(Number);
  }

  ns.NeuronPage = function (root, data, bytes) {
    this.root = root;
    this.data = data;
    this.bytes = bytes;
    this.tokens = data.tokens.length;
    this.series = data.series.length;
    this.starts = [];  /* each layer's first byte in the payload */
    var start = 0, size = this.series * this.tokens;
    for (var layer = 0; layer < data.units.length; layer++) {
      this.starts.push(start);
      start += data.units[layer].length * size;
    }
    this.layer = 0;
    this.k = 0;
    this.unit = 0;
    this.canvas = root.querySelector('[data-neuron-map]');
    this.status = root.querySelector('[data-status="neurons"]');
    this.textStatus = root.querySelector('[data-status="neuron-text"]');
    this.unitSelect = root.querySelector('[data-neuron-unit]');
    this.elements = ns.buildTokens(root.querySelector('[data-neuron-text]'), data);
    var elements = this.elements;
    (data.breaks || []).forEach(function (i) { elements[i].classList.add('att-gap'); });
    this.inks = elements.map(function (element) { return parseRgb(getComputedStyle(element).color); });
    this.listen();
  };

  var proto = ns.NeuronPage.prototype;

  /* Series s (0: the drawn one) of unit slot k of the layer at token i: the exact value within the stated bound. */
  proto.value = function (k, i, s) {
    s = s || 0;
    var q = this.bytes[this.starts[this.layer] + ((s * this.k + k) * this.tokens) + i] - this.data.levels;
    return q / this.data.levels * this.data.scales[this.layer][s][k];
  };

  proto.share = function (k, i) {
    return this.value(k, i) / (this.data.colourScales[this.layer][k] || 1);
  };

  proto.showLayer = function (layer) {
    this.layer = layer;
    var units = this.data.units[layer], select = this.unitSelect;
    this.k = units.length;
    select.textContent = '';
    units.forEach(function (unit, k) {
      var option = document.createElement('option');
      option.value = String(k);
      option.textContent = 'unit ' + unit;
      select.appendChild(option);
    });
    this.root.querySelectorAll('[data-neuron-layer-note], [data-neuron-summary-layer]').forEach(function (element) {
      var owner = element.getAttribute('data-neuron-layer-note') || element.getAttribute('data-neuron-summary-layer');
      element.hidden = Number(owner) !== layer;
    });
    var summary = this.root.querySelector('[data-neuron-summary]');
    if (summary) summary.closest('section').hidden = !this.k;
    select.disabled = !this.k;
    this.draw();
    this.status.textContent = this.k ? 'Point at a cell.' : 'No units in this layer.';
    this.showUnit(0);
    document.body.setAttribute('data-shown-layer', String(layer));  /* not data-neuron-layer: that names the select */
  };

  proto.draw = function () {
    var canvas = this.canvas, width = this.tokens, height = this.k;
    canvas.hidden = height === 0;
    if (!height) return;
    canvas.width = width;
    canvas.height = height;
    canvas.style.height = height * CELL_HEIGHT + 'px';
    var context = canvas.getContext('2d'), image = context.createImageData(width, height);
    for (var k = 0; k < height; k++) {
      for (var i = 0; i < width; i++) {
        var offset = 4 * (k * width + i);
        image.data.set(diverging(this.share(k, i)), offset);
        image.data[offset + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
  };

  /* Colour the text by unit slot k, each token's text in a colour that stays readable on it; each token carries its
     (drawn series') value as data-value. A layer without units leaves the text plain. */
  proto.showUnit = function (k) {
    this.unit = k;
    this.unitSelect.value = String(k);
    for (var i = 0; i < this.tokens; i++) {
      var element = this.elements[i];
      if (this.k) {
        var background = diverging(this.share(k, i));
        element.setAttribute('data-value', String(this.value(k, i)));
        element.style.backgroundColor = 'rgb(' + background.join(', ') + ')';
        element.style.color = 'rgb(' + ns.readableInk(background, this.inks[i]).join(', ') + ')';
      } else {
        element.removeAttribute('data-value');
        element.style.backgroundColor = element.style.color = '';
      }
    }
    this.root.querySelectorAll('[data-neuron-summary-layer="' + this.layer + '"] [data-slot]').forEach(function (row) {
      row.setAttribute('aria-selected', String(Number(row.getAttribute('data-slot')) === k));
    });
    this.textStatus.textContent = this.k ?
      'Layer ' + this.layer + ', unit ' + this.data.units[this.layer][k] + '. Hover a token.' : '';
  };

  proto.cellAt = function (event) {
    var rect = this.canvas.getBoundingClientRect();
    return {
      i: Math.min(this.tokens - 1, Math.floor((event.clientX - rect.left) / rect.width * this.tokens)),
      k: Math.min(this.k - 1, Math.floor((event.clientY - rect.top) / rect.height * this.k))
    };
  };

  /* The readout: where the cell is, then every series' value (named where the page has several). */
  proto.describe = function (k, i) {
    var page = this, place = this.data.places ? this.data.places[i] : 'token ' + i;
    var values = this.data.series.map(function (name, s) {
      return (name ? name + ' ' : '') + page.value(k, i, s).toFixed(4);
    });
    return 'layer ' + this.layer + ' · unit ' + this.data.units[this.layer][k] + ' · ' + place + ' “' +
      this.data.labels[i] + '”: ' + values.join(' · ');
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
      if (token && page.k) page.textStatus.textContent = page.describe(page.unit, Number(token.getAttribute('data-index')));
    });
    this.root.addEventListener('click', function (event) {
      var row = event.target.closest('[data-neuron-summary] [data-slot]');
      if (row) page.showUnit(Number(row.getAttribute('data-slot')));
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
