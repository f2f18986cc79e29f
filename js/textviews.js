/* The observer and observed text views: the tokens as text, coloured by the weights of a hovered or frozen token. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  /* Build one token element per token; its textContent is exactly the token's characters. */
  ns.buildTokens = function (container, text) {
    var fragment = document.createDocumentFragment(), elements = [];
    for (var i = 0; i < text.tokens.length; i++) {
      var element = document.createElement('span');
      element.className = 'att-token' + (i >= text.promptLength ? ' att-completion' : '') +
        (text.special[i] ? ' att-special' : '');
      if (text.kinds[i]) element.setAttribute('data-kind', text.kinds[i]);
      element.setAttribute('data-index', String(i));
      element.textContent = text.tokens[i];
      fragment.appendChild(element);
      elements.push(element);
    }
    container.appendChild(fragment);
    return elements;
  };

  /* One view: `mode` is 'observer' (row of the shown token) or 'observed' (its column); `strip`, when given, is
     the element of its mass strip. */
  ns.TextView = function (container, status, text, mode, strip) {
    var n = text.tokens.length;
    this.container = container;
    this.status = status;
    this.text = text;
    this.mode = mode;
    this.elements = ns.buildTokens(container, text);
    this.sums = new Int32Array(n);
    this.bases = new Int32Array(n);
    this.sinkSums = new Int32Array(n);
    this.levels = new Int16Array(n);
    this.drawnSums = new Int32Array(n).fill(-1);
    this.drawnLevels = new Int16Array(n);
    this.shown = -1;
    this.pointer = -1;
    this.frozen = false;
    this.source = null;
    this.strip = strip ? new ns.MassStrip(strip, n) : null;
    if (this.strip) this.strip.onPick = this.scrollTo.bind(this);
    this.listen();
  };

  var proto = ns.TextView.prototype;

  proto.listen = function () {
    var view = this;
    this.container.addEventListener('mouseover', function (event) {
      var index = tokenIndex(event.target);
      if (index < 0) return;
      view.pointer = index;
      if (view.onActivate) view.onActivate(view);
      if (view.frozen) view.describe(); else view.show(index);
    });
    this.container.addEventListener('mouseleave', function () {
      view.pointer = -1;
      view.describe();
    });
    this.container.addEventListener('mousedown', function (event) {
      if (event.detail > 1) event.preventDefault();  /* a double-click freezes; it should not select a word */
    });
    this.container.addEventListener('dblclick', function (event) {
      var index = tokenIndex(event.target);
      if (index >= 0) view.toggleFreeze(index);
    });
  };

  function tokenIndex(target) {
    var element = target.closest && target.closest('[data-index]');
    return element ? Number(element.getAttribute('data-index')) : -1;
  }

  /* Show a new section, head choice or scale: `source` = {data, slots, divisor, options}. */
  proto.setSource = function (source) {
    this.source = source;
    this.drawnSums.fill(-1);
    var data = source.data;
    for (var i = 0; i < this.elements.length; i++) {
      this.elements[i].classList.toggle('att-norow', !data.hasRow(i));
    }
    if (this.mode === 'observed') data.fillColumn(source.slots, 0, this.sinkSums);  /* each row's weight on token 0 */
    this.render();
  };

  proto.show = function (index) {
    var previous = this.shown;
    this.shown = Math.max(0, Math.min(this.elements.length - 1, index));
    if (previous >= 0) this.elements[previous].classList.remove('att-shown', 'att-frozen');
    this.elements[this.shown].classList.add('att-shown');
    this.elements[this.shown].classList.toggle('att-frozen', this.frozen);
    this.render();
    if (this.onShow) this.onShow(this);  /* a page that links views (compare.js, the matrix) follows the shown token */
  };

  /* Show no token and no weights, saying why in the status line (a linked view with nothing to show). */
  proto.hide = function (message) {
    if (this.shown >= 0) this.elements[this.shown].classList.remove('att-shown', 'att-frozen');
    this.shown = -1;
    this.clear();
    this.status.textContent = message;
  };

  proto.toggleFreeze = function (index) {
    this.frozen = !(this.frozen && index === this.shown);
    this.show(index);
  };

  /* Scroll the view (only the view) so that token `index` is at its top. */
  proto.scrollTo = function (index) {
    var box = this.container.getBoundingClientRect(), at = this.elements[index].getBoundingClientRect();
    this.container.scrollTop += at.top - box.top - this.container.clientTop;
  };

  /* Move the shown (or frozen) token by `delta` and bring it into sight. */
  proto.move = function (delta) {
    this.show((this.shown < 0 ? 0 : this.shown) + delta);
    this.reveal();
  };

  /* Freeze the view on token `index` and bring it into sight. */
  proto.freezeOn = function (index) {
    this.frozen = true;
    this.show(index);
    this.reveal();
  };

  /* Bring the shown token into sight. */
  proto.reveal = function () {
    this.elements[this.shown].scrollIntoView({ block: 'nearest' });
  };

  proto.render = function () {
    if (!this.source || this.shown < 0) return;
    var has = this.mode === 'observer' ? this.source.data.hasRow(this.shown) : true;
    if (has) {
      this.computeLine();
      this.paint(ns.weightTexts(this.source.divisor));
      if (this.strip) this.strip.show(this.sums, this.source.divisor, this.source.options.log, this.shown);
    } else {
      this.clear();
    }
    this.describe();
  };

  /* Fill sums, bases and colour levels of the shown token's row (observer) or column (observed). */
  proto.computeLine = function () {
    var source = this.source, options = source.options, shown = this.shown;
    var ignoreSink = options.ignoreSink, divisor = source.divisor;
    if (this.mode === 'observer') {
      source.data.fillRow(source.slots, shown, this.sums);
      this.bases.fill(ignoreSink ? divisor - this.sums[0] : divisor);
      ns.colourLevels(this.sums, this.bases, ignoreSink ? 0 : -1, options.rowMax, this.levels, options.log);
      return;
    }
    source.data.fillColumn(source.slots, shown, this.sums);
    for (var i = 0; i < this.bases.length; i++) this.bases[i] = ignoreSink ? divisor - this.sinkSums[i] : divisor;
    ns.colourLevels(this.sums, this.bases, -1, options.rowMax, this.levels, options.log);
    if (ignoreSink && shown === 0) this.levels.fill(-1);
  };

  /* Write data-weight and colour only where they changed since the last paint. */
  proto.paint = function (texts) {
    for (var k = 0; k < this.elements.length; k++) {
      var element = this.elements[k], sum = this.sums[k], level = this.levels[k];
      if (sum !== this.drawnSums[k]) {
        element.setAttribute('data-weight', texts[sum]);
        this.drawnSums[k] = sum;
      }
      if (level !== this.drawnLevels[k]) {
        element.style.backgroundColor = level > 0 ? ns.paletteCss[level] : '';
        if (level === -1 || this.drawnLevels[k] === -1) element.classList.toggle('att-excluded', level === -1);
        this.drawnLevels[k] = level;
      }
    }
  };

  /* Show no weights: the shown token has no row on this page. */
  proto.clear = function () {
    if (this.strip) this.strip.clear();
    for (var k = 0; k < this.elements.length; k++) {
      if (this.drawnSums[k] !== -1) this.elements[k].removeAttribute('data-weight');
      if (this.drawnLevels[k] !== 0) {
        this.elements[k].style.backgroundColor = '';
        this.elements[k].classList.remove('att-excluded');
      }
    }
    this.drawnSums.fill(-1);
    this.drawnLevels.fill(0);
  };

  /* The status line: the weight between the shown token and the one under the pointer. */
  proto.describe = function () {
    if (this.shown < 0) return;
    var labels = this.text.labels, shown = this.shown, other = this.pointer >= 0 ? this.pointer : shown;
    var query = this.mode === 'observer' ? shown : other, key = this.mode === 'observer' ? other : shown;
    var line = 'token ' + query + ' “' + labels[query] + '” → token ' + key + ' “' + labels[key] + '”: ';
    if (this.mode === 'observer' && !this.source.data.hasRow(shown)) {
      line = 'token ' + shown + ' “' + labels[shown] + '” has no row on this page';
    } else if (!this.source.data.hasRow(query)) {
      line += 'row not on this page';
    } else {
      line += (this.sums[other] / this.source.divisor).toFixed(4);
    }
    this.status.textContent = line + (this.frozen ? '  · frozen' : '');
  };
})(window.attReport);
