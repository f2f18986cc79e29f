/* The compare index: colour the divergence heatmap; sort the ranking table by a clicked column header. */
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

  /* Sort the rows by the numbers (data-value) of column `header`: ascending first, reversed on the next click. */
  ns.sortTable = function (table, header) {
    var column = Number(header.getAttribute('data-sort'));
    var order = header.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    function value(row, at) { return Number(row.cells[at].getAttribute('data-value')); }
    rows.sort(function (x, y) { return order * (value(x, column) - value(y, column)) || value(x, 0) - value(y, 0); });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll('th[data-sort]').forEach(function (th) {
      if (th === header) th.setAttribute('aria-sort', order > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    });
  };

  document.addEventListener('DOMContentLoaded', function () {
    var heatmap = document.querySelector('[data-heatmap]'), ranking = document.querySelector('[data-ranking]');
    if (heatmap) ns.paintHeatmap(heatmap);
    if (ranking) {
      ranking.addEventListener('click', function (event) {
        var header = event.target.closest('th[data-sort]');
        if (header) ns.sortTable(ranking, header);
      });
    }
    document.body.setAttribute('data-ready', 'true');
  });
})(window.attReport);
