/* Tables of numbers shared by the index pages: sort by a clicked column header, and show a long table's first rows
   until the reader asks for all. Wired through data-* attributes, so any page that includes this file gets both. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var firstOrder = new WeakMap();  /* tbody -> Map(row -> its position when the page opened) */

  /* Where each row of `body` stood when the table was first sorted: ties keep that order. */
  function openingOrder(body) {
    if (!firstOrder.has(body)) {
      var order = new Map();
      Array.prototype.forEach.call(body.rows, function (row, k) { order.set(row, k); });
      firstOrder.set(body, order);
    }
    return firstOrder.get(body);
  }

  /* Sort the rows by the numbers (data-sort) of the header's column (data-sort-column): first in the header's
     data-sort-first direction (descending unless it says ascending), reversed on the next click. */
  ns.sortTable = function (table, header) {
    var column = Number(header.getAttribute('data-sort-column'));
    var shown = header.getAttribute('aria-sort');
    var direction = shown ? (shown === 'descending' ? 'ascending' : 'descending')
                          : header.getAttribute('data-sort-first') || 'descending';
    var sign = direction === 'descending' ? -1 : 1;
    var body = table.tBodies[0], order = openingOrder(body), rows = Array.prototype.slice.call(body.rows);
    function value(row) { return Number(row.cells[column].getAttribute('data-sort')); }
    rows.sort(function (x, y) { return sign * (value(x) - value(y)) || order.get(x) - order.get(y); });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll('th[data-sort-column]').forEach(function (th) {
      if (th === header) th.setAttribute('aria-sort', direction); else th.removeAttribute('aria-sort');
    });
    ns.showTopRows(table);
  };

  /* A table with data-show-top="N" shows only its first N rows unless its [data-show-all] button is pressed. */
  ns.showTopRows = function (table) {
    var top = Number(table.getAttribute('data-show-top'));
    if (!top) return;
    var button = document.querySelector('[data-show-all][aria-controls="' + CSS.escape(table.id) + '"]');
    var all = button !== null && button.getAttribute('aria-expanded') === 'true';
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row, k) { row.hidden = !all && k >= top; });
  };

  document.addEventListener('click', function (event) {
    var header = event.target.closest('table[data-sortable] th[data-sort-column]');
    if (header) ns.sortTable(header.closest('table'), header);
    var button = event.target.closest('[data-show-all]');
    if (button) {
      button.setAttribute('aria-expanded', String(button.getAttribute('aria-expanded') !== 'true'));
      ns.showTopRows(document.getElementById(button.getAttribute('aria-controls')));
    }
  });
})(window.attReport);
