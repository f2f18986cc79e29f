/* Wire a chunk page: sections (decoded when first shown), head selector, scale options, keyboard, fragment. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  ns.ChunkPage = function (root, data) {
    this.root = root;
    this.data = data;
    this.sections = {};
    this.decoded = {};
    this.current = null;
    this.choice = null;
    this.request = 0;
    var page = this;
    data.sections.forEach(function (section) { page.sections[section.key] = section; });
    this.observer = this.textView('observer');
    this.observed = this.textView('observed');
    this.matrix = new ns.MatrixView(find(root, '[data-matrix-panel]'), data);
    this.active = this.observer;
    this.observer.onActivate = this.observed.onActivate = function (view) { page.active = view; };
    this.observer.onShow = function (view) { page.matrix.mark('query', view.shown); };
    this.observed.onShow = function (view) { page.matrix.mark('key', view.shown); };
    this.matrix.onPick = function (query, key) { page.showPair(query, key); };
    this.listen();
  };

  function find(root, selector) {
    return root.querySelector(selector);
  }

  var proto = ns.ChunkPage.prototype;

  proto.textView = function (mode) {
    var root = this.root;
    return new ns.TextView(find(root, '[data-view="' + mode + '"]'), find(root, '[data-status="' + mode + '"]'), this.data,
      mode, find(root, '[data-strip="' + mode + '"]'));
  };

  /* The decoded heads of a section, decoded once on first use; its payload element is marked data-decoded. */
  proto.readSection = function (key) {
    var meta = this.sections[key];
    if (!this.decoded[key]) {
      var element = document.getElementById(meta.payload);
      var layout = {
        headCount: meta.headCount, rowStart: meta.rowStart, rowCount: meta.rowCount,
        numTokens: this.data.tokens.length, causal: this.data.causal
      };
      this.decoded[key] = ns.decodeSection(element.textContent.trim(), layout).then(function (section) {
        element.setAttribute('data-decoded', 'true');
        return section;
      });
    }
    return this.decoded[key];
  };

  /* Show section `key` with head `head` (or its first); the latest request wins when several overlap. */
  proto.showSection = async function (key, head) {
    var request = ++this.request;
    var section = await this.readSection(key);
    if (request !== this.request) return;
    this.current = { meta: this.sections[key], data: section };
    this.root.querySelectorAll('[data-section-heads], [data-rows-note]').forEach(function (element) {
      var owner = element.hasAttribute('data-section-heads') ? 'data-section-heads' : 'data-rows-note';
      element.hidden = element.getAttribute(owner) !== key;
    });
    this.showReading(this.current.meta.reading);
    var select = find(this.root, '[data-section-select]');
    if (select) select.value = key;
    document.body.setAttribute('data-layer', this.current.meta.layer);
    document.body.setAttribute('data-heads', this.current.meta.heads);
    this.selectHead(this.headButton(head) || this.headButtons()[0]);
    document.body.setAttribute('data-shown', key);
  };

  /* Say what the shown matrices are, and offer only the scale options that make sense for them. */
  proto.showReading = function (reading) {
    this.root.querySelectorAll('[data-reading]').forEach(function (element) {
      element.hidden = element.getAttribute('data-reading') !== reading;
    });
    this.root.querySelectorAll('[data-readings]').forEach(function (element) {
      element.hidden = element.getAttribute('data-readings').split(' ').indexOf(reading) < 0;
    });
  };

  /* Whether scale option `option` is on and offered for the shown section. */
  proto.optionOn = function (option) {
    var input = find(this.root, '[data-option="' + option + '"]');
    return Boolean(input && input.checked && !input.closest('[hidden]'));
  };

  proto.headButtons = function () {
    var group = find(this.root, '[data-section-heads="' + CSS.escape(this.current.meta.key) + '"]');
    return Array.prototype.slice.call(group.querySelectorAll('[data-head]'));
  };

  proto.headButton = function (head) {
    return this.headButtons().filter(function (button) { return button.getAttribute('data-head') === head; })[0];
  };

  proto.selectHead = function (button) {
    this.headButtons().forEach(function (other) { other.setAttribute('aria-pressed', String(other === button)); });
    this.choice = button;
    this.refresh();
  };

  /* Hand the current section, head choice and scale (the options offered for it) to every view; the legend names
     the scale in use. */
  proto.refresh = function () {
    var slot = this.choice.getAttribute('data-slot'), count = this.current.meta.headCount, slots = [];
    if (slot === 'mean') for (var h = 0; h < count; h++) slots.push(h); else slots.push(Number(slot));
    var options = { rowMax: this.optionOn('row-max'), ignoreSink: this.optionOn('ignore-sink'), log: this.optionOn('log') };
    var scale = options.rowMax ? 'row' : 'one', ramp = options.log ? 'log' : 'linear';
    this.root.querySelectorAll('[data-legend-scale]').forEach(function (element) {
      element.hidden = element.getAttribute('data-legend-scale') !== scale;
    });
    this.root.querySelectorAll('[data-legend-ramp]').forEach(function (element) {
      element.hidden = element.getAttribute('data-legend-ramp') !== ramp;
    });
    find(this.root, '[data-legend-sink]').hidden = !options.ignoreSink;
    var source = { data: this.current.data, slots: slots, divisor: ns.QUANT_LEVELS * slots.length, options: options };
    this.observer.setSource(source);
    this.observed.setSource(source);
    this.matrix.setSource(source);
  };

  /* Freeze the text views on a matrix cell: its query in the observer view, its key in the observed view. */
  proto.showPair = function (query, key) {
    this.observer.freezeOn(query);
    this.observed.freezeOn(key);
  };

  /* Step through the head choices of the section, wrapping around. */
  proto.stepHead = function (delta) {
    var buttons = this.headButtons(), at = buttons.indexOf(this.choice);
    this.selectHead(buttons[(at + delta + buttons.length) % buttons.length]);
  };

  proto.listen = function () {
    var page = this;
    this.root.addEventListener('click', function (event) {
      var button = event.target.closest('[data-head]');
      if (button && page.current && !button.closest('[hidden]')) page.selectHead(button);
      var format = event.target.closest('[data-export]');
      if (format && page.current) page.exportMatrix(format.getAttribute('data-export'));
    });
    this.root.addEventListener('change', function (event) {
      if (event.target.hasAttribute('data-option') && page.current) page.refresh();
      if (event.target.hasAttribute('data-section-select')) page.showSection(event.target.value, null);
    });
    document.addEventListener('keydown', function (event) { page.onKey(event); });
    window.addEventListener('hashchange', function () { page.openFragment(); });
  };

  /* Whether `key` names an own property of `table` (never one inherited, such as 'constructor'). */
  function owns(table, key) {
    return key !== null && Object.prototype.hasOwnProperty.call(table, key);
  }

  var KEYS = { ArrowLeft: -1, ArrowRight: 1 };
  var HEAD_KEYS = { ArrowUp: -1, ArrowDown: 1, '[': -1, ']': 1 };

  /* ← → move the active view's token; ↑ ↓ [ ] change the head. Form controls keep their own keys. */
  proto.onKey = function (event) {
    if (!this.current || event.altKey || event.ctrlKey || event.metaKey || event.target.closest('input, select, textarea')) return;
    if (owns(KEYS, event.key)) this.active.move(KEYS[event.key]);
    else if (owns(HEAD_KEYS, event.key)) this.stepHead(HEAD_KEYS[event.key]);
    else return;
    event.preventDefault();
  };

  proto.exportMatrix = function (format) {
    var stem = this.current.meta.key + '-head-' + this.choice.getAttribute('data-head');
    if (format === 'png') this.matrix.exportPng(stem);
    else this.matrix.exportSvg(stem, this.current.meta.title + ' · ' + this.choice.textContent.trim());
  };

  /* Open what the fragment names: #head=3, #section=KEY, or both joined by &. */
  proto.openFragment = function () {
    var params = new URLSearchParams(location.hash.slice(1));
    var key = params.get('section');
    if (!owns(this.sections, key)) key = this.current ? this.current.meta.key : this.data.opening;
    this.showSection(key, params.get('head'));
    if (params.get('section') === key) this.root.scrollIntoView();
  };

  document.addEventListener('DOMContentLoaded', function () {
    var root = document.querySelector('[data-viewer]');
    var data = ns.expandTokenData(JSON.parse(document.getElementById('att-data').textContent));
    ns.page = new ns.ChunkPage(root, data);
    ns.page.openFragment();
  });
})(window.attReport);
