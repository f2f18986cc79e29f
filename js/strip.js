/* The mass strip beside a text view: one cell per block of tokens, the sum of the weights the view shows there. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  ns.STRIP_CELLS = 128;

  /* Cells for `count` tokens in blocks of ceil(count / STRIP_CELLS); a click on a cell calls onPick(first token). */
  ns.MassStrip = function (element, count) {
    this.element = element;
    this.block = Math.max(1, Math.ceil(count / ns.STRIP_CELLS));
    this.count = count;
    this.cells = [];
    this.sums = new Float64Array(Math.ceil(count / this.block));
    this.levels = new Int16Array(this.sums.length);
    this.masses = new Float64Array(this.sums.length).fill(-1);  /* the data-mass each cell carries; -1: none */
    this.shown = -1;
    this.onPick = null;
    element.setAttribute('data-block-size', String(this.block));
    var fragment = document.createDocumentFragment();
    for (var b = 0; b < this.sums.length; b++) {
      var cell = document.createElement('div');
      var last = Math.min(count, (b + 1) * this.block) - 1;
      cell.className = 'att-mass-cell';
      cell.setAttribute('data-block-start', String(b * this.block));
      cell.setAttribute('data-block-end', String(last));
      cell.title = 'tokens ' + b * this.block + '–' + last;
      fragment.appendChild(cell);
      this.cells.push(cell);
    }
    element.appendChild(fragment);
    var strip = this;
    element.addEventListener('click', function (event) {
      var cell = event.target.closest('[data-block-start]');
      if (cell && strip.onPick) strip.onPick(Number(cell.getAttribute('data-block-start')));
    });
  };

  var proto = ns.MassStrip.prototype;

  /* Show the block sums of sums[k] / divisor, coloured against the largest block (log scale when `log`), and mark
     the block of token `shown`. Only cells whose sum or colour changed are touched. */
  proto.show = function (sums, divisor, log, shown) {
    var block = this.block, totals = this.sums, max = 0, b;
    totals.fill(0);
    for (var k = 0; k < this.count; k++) totals[(k / block) | 0] += sums[k];
    for (b = 0; b < totals.length; b++) if (totals[b] > max) max = totals[b];
    for (b = 0; b < totals.length; b++) {
      var cell = this.cells[b], mass = totals[b] / divisor, level = ns.colourLevel(max ? totals[b] / max : 0, log);
      if (this.masses[b] !== mass) {
        cell.setAttribute('data-mass', String(mass));
        cell.title = 'tokens ' + cell.getAttribute('data-block-start') + '–' + cell.getAttribute('data-block-end') +
          ': ' + mass.toFixed(4);
        this.masses[b] = mass;
      }
      if (this.levels[b] !== level) {
        cell.style.backgroundColor = level > 0 ? ns.paletteCss[level] : '';
        this.levels[b] = level;
      }
    }
    var at = (shown / block) | 0;
    if (this.shown !== at) {
      if (this.shown >= 0) this.cells[this.shown].classList.remove('att-shown');
      this.cells[at].classList.add('att-shown');
      this.shown = at;
    }
  };

  /* Show no mass (the shown token has no row on this page). */
  proto.clear = function () {
    for (var b = 0; b < this.cells.length; b++) {
      this.cells[b].removeAttribute('data-mass');
      this.cells[b].style.backgroundColor = '';
    }
    if (this.shown >= 0) this.cells[this.shown].classList.remove('att-shown');
    this.levels.fill(0);
    this.masses.fill(-1);
    this.shown = -1;
  };
})(window.attReport);
