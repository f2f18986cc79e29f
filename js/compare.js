/* A compare page: two captures' text views (textviews.js) side by side per mode, aligned tokens linked.

DOM: each view is [data-view="observer"|"observed"][data-side="a"|"b"], its status line
[data-status=MODE][data-side=SIDE]; [data-mode] buttons switch the shown [data-mode-panel]. Showing a token on one
side shows its aligned partner on the other (class att-partner, data-partner-of = the index it partners), or says
"no matching token"; a double-click freezes both sides of the mode. Tokens without a partner carry att-unaligned.
<body data-shown=KEY> marks the page decoded and interactive. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var SIDES = ['a', 'b'];
  var OTHER = { a: 'b', b: 'a' };

  function find(root, selector) {
    return root.querySelector(selector);
  }

  /* For each side, its token index -> the other side's aligned index. */
  function partnerMaps(pairs) {
    var maps = { a: new Map(), b: new Map() };
    pairs.forEach(function (pair) {
      maps.a.set(pair[0], pair[1]);
      maps.b.set(pair[1], pair[0]);
    });
    return maps;
  }

  /* One mode's two views: whichever shows a token leads, the other follows to the partner. */
  ns.ComparePair = function (root, mode, data, partners) {
    var pair = this;
    this.mode = mode;
    this.partners = partners;
    this.views = {};
    this.marked = null;
    this.following = false;
    SIDES.forEach(function (side) {
      var where = '[data-side="' + side + '"]';
      var view = new ns.TextView(find(root, '[data-view="' + mode + '"]' + where),
        find(root, '[data-status="' + mode + '"]' + where), data.sides[side], mode);
      view.side = side;
      view.onShow = function (shown) { pair.follow(shown); };
      view.elements.forEach(function (element, index) {
        if (!partners[side].has(index)) element.classList.add('att-unaligned');
      });
      pair.views[side] = view;
    });
  };

  /* Show the partner of the leader's token on the other side, frozen alike, or say that it has none. */
  ns.ComparePair.prototype.follow = function (leader) {
    if (this.following) return;
    var other = this.views[OTHER[leader.side]], partner = this.partners[leader.side].get(leader.shown);
    if (this.marked) {
      this.marked.classList.remove('att-partner');
      this.marked.removeAttribute('data-partner-of');
      this.marked = null;
    }
    this.following = true;
    other.frozen = leader.frozen;
    if (partner === undefined) {
      other.hide('no matching token for ' + leader.side.toUpperCase() + '’s token ' + leader.shown +
        ' “' + leader.text.labels[leader.shown] + '”');
    } else {
      other.show(partner);
      this.marked = other.elements[partner];
      this.marked.classList.add('att-partner');
      this.marked.setAttribute('data-partner-of', String(leader.shown));
    }
    this.following = false;
  };

  ns.ComparePage = function (root, data) {
    var partners = partnerMaps(data.pairs);
    this.root = root;
    this.data = data;
    this.sections = null;
    this.choice = null;
    this.options = { rowMax: false, ignoreSink: false };
    this.pairs = ['observer', 'observed'].map(function (mode) { return new ns.ComparePair(root, mode, data, partners); });
    this.listen();
  };

  var proto = ns.ComparePage.prototype;

  /* Decode both captures' payloads (see att_report/encode.py). */
  proto.decode = async function () {
    var data = this.data, sections = {};
    await Promise.all(SIDES.map(async function (side) {
      var text = data.sides[side], meta = text.sections[0], element = document.getElementById(meta.payload);
      sections[side] = await ns.decodeSection(element.textContent.trim(), {
        headCount: meta.headCount, rowStart: meta.rowStart, rowCount: meta.rowCount,
        numTokens: text.tokens.length, causal: text.causal
      });
      element.setAttribute('data-decoded', 'true');
    }));
    this.sections = sections;
  };

  proto.headButtons = function () {
    return Array.prototype.slice.call(this.root.querySelectorAll('[data-section-heads] [data-head]'));
  };

  proto.selectHead = function (button) {
    this.headButtons().forEach(function (other) { other.setAttribute('aria-pressed', String(other === button)); });
    this.choice = button;
    this.refresh();
  };

  /* Hand each side's decoded heads, the head choice and the scale to every view. */
  proto.refresh = function () {
    var slot = this.choice.getAttribute('data-slot'), page = this;
    var count = this.data.sides.a.sections[0].headCount, slots = [];
    if (slot === 'mean') for (var h = 0; h < count; h++) slots.push(h); else slots.push(Number(slot));
    this.pairs.forEach(function (pair) {
      SIDES.forEach(function (side) {
        pair.views[side].setSource({
          data: page.sections[side], slots: slots, divisor: ns.QUANT_LEVELS * slots.length, options: page.options
        });
      });
    });
  };

  proto.setMode = function (mode) {
    this.root.querySelectorAll('[data-mode]').forEach(function (button) {
      button.setAttribute('aria-pressed', String(button.getAttribute('data-mode') === mode));
    });
    this.root.querySelectorAll('[data-mode-panel]').forEach(function (panel) {
      panel.hidden = panel.getAttribute('data-mode-panel') !== mode;
    });
  };

  proto.setOption = function (option, on) {
    this.options[option === 'row-max' ? 'rowMax' : 'ignoreSink'] = on;
    if (this.choice) this.refresh();
  };

  /* Open the head the fragment names (#head=3), else keep the one shown, else the first. */
  proto.openFragment = function () {
    var head = new URLSearchParams(location.hash.slice(1)).get('head');
    var button = this.headButtons().filter(function (b) { return b.getAttribute('data-head') === head; })[0];
    this.selectHead(button || this.choice || this.headButtons()[0]);
  };

  proto.listen = function () {
    var page = this;
    this.root.addEventListener('click', function (event) {
      var head = event.target.closest('[data-head]'), mode = event.target.closest('[data-mode]');
      if (head && page.sections) page.selectHead(head);
      if (mode) page.setMode(mode.getAttribute('data-mode'));
    });
    this.root.addEventListener('change', function (event) {
      var option = event.target.getAttribute('data-option');
      if (option) page.setOption(option, event.target.checked);
    });
    window.addEventListener('hashchange', function () { if (page.sections) page.openFragment(); });
  };

  document.addEventListener('DOMContentLoaded', async function () {
    var root = document.querySelector('[data-compare]');
    if (!root) return;
    var data = JSON.parse(document.getElementById('att-data').textContent);
    Object.keys(data.sides).forEach(function (side) { ns.expandTokenData(data.sides[side]); });
    ns.page = new ns.ComparePage(root, data);
    root.querySelectorAll('[data-option]').forEach(function (input) {
      ns.page.setOption(input.getAttribute('data-option'), input.checked);
    });
    await ns.page.decode();
    ns.page.openFragment();
    document.body.setAttribute('data-shown', data.key);
  });
})(window.attReport);
