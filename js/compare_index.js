/* The compare index: colour the divergence heatmap (tables.js sorts the ranking and shows all of it on demand). */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  /* Colour each cell by its divergence over the largest one, on the views' white-to-blue scale. */
  ns.paintHeatmap = function (table) {
    var cells = Array.prototype.slice.call(table.querySelectorAll('[data-divergence]'));
    var values = cells.map(function (cell) { return Number(cell.getAttribute('data-divergence')); });
    var max = Math.max.apply(null, values.concat([0])) || 1;
    cells.forEach(function (cell, k) {
      var level = Math.round(values[k] / max * ns.COLOUR_LEVELS);
      cell.style.backgroundColor = level > 0 ? ns.paletteCss[level] : '';
    });
  };

  document.addEventListener('DOMContentLoaded', function () {
    var heatmap = document.querySelector('[data-heatmap]');
    if (heatmap) ns.paintHeatmap(heatmap);
    document.body.setAttribute('data-ready', 'true');
  });
})(window.attReport);
