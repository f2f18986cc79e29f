/* Decode a section's payload (see att_report/encode.py) and read its weights; the colour scale of every view. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  ns.QUANT_LEVELS = 255;
  ns.COLOUR_LEVELS = 64;
  var LOW = [255, 255, 255];
  var HIGH = [96, 165, 250];

  /* Colour of each level 0..COLOUR_LEVELS, white to blue, as CSS strings and as RGB bytes. */
  ns.paletteRgb = new Uint8Array(3 * (ns.COLOUR_LEVELS + 1));
  ns.paletteCss = [];
  for (var level = 0; level <= ns.COLOUR_LEVELS; level++) {
    var rgb = [0, 1, 2].map(function (c) {
      return Math.round(LOW[c] + (HIGH[c] - LOW[c]) * level / ns.COLOUR_LEVELS);
    });
    ns.paletteRgb.set(rgb, 3 * level);
    ns.paletteCss.push('rgb(' + rgb.join(', ') + ')');
  }

  /* Fill in the sparse token lists of the page data (see att_report.viewer.token_data): labels, kinds, special. */
  ns.expandTokenData = function (data) {
    var labels = data.labels, kinds = data.kinds, special = data.special;
    data.labels = data.tokens.map(function (token, i) { return i in labels ? labels[i] : token; });
    data.kinds = data.tokens.map(function (token, i) { return kinds[i] || ''; });
    data.special = data.tokens.map(function () { return false; });
    special.forEach(function (i) { data.special[i] = true; });
    return data;
  };

  ns.base64ToBytes = function (text) {
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  };

  ns.inflate = async function (bytes) {
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  };

  /* First held row of key column j (rows before it are above the diagonal when causal). */
  function firstRow(layout, j) {
    return layout.causal ? Math.min(layout.rowCount, Math.max(0, j - layout.rowStart)) : 0;
  }

  function readUint32(bytes, at) {
    return (bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | bytes[at + 3] << 24) >>> 0;
  }

  /* Scatter the column-ordered runs (count, gaps, non-zero bytes; see encode.py) into one dense rows x tokens
     Uint8Array per head. */
  ns.unpackCells = function (raw, layout) {
    var rows = layout.rowCount, tokens = layout.numTokens, heads = [];
    var cells = readUint32(raw, 0), count = readUint32(raw, 4);
    var at = 8, value = raw.length - count, seen = 0;
    function nextGap() {
      if (seen++ === count) return Infinity;
      var gap = raw[at++];
      if (gap === 255) {
        gap = readUint32(raw, at);
        at += 4;
      }
      return gap;
    }
    var perHead = 0;
    for (var j = 0; j < tokens; j++) perHead += rows - firstRow(layout, j);
    if (cells !== perHead * layout.headCount) throw new Error('attention payload does not match its layout');
    var next = nextGap();
    for (var h = 0; h < layout.headCount; h++) {
      var dense = new Uint8Array(rows * tokens);
      for (var col = 0; col < tokens; col++) {
        var first = firstRow(layout, col), skip = rows - first;
        /* jump over whole runs of zero cells in this column */
        while (skip > 0) {
          if (next >= skip) { next -= skip; break; }
          var r = rows - skip + next;
          skip -= next + 1;
          dense[r * tokens + col] = raw[value++];
          next = nextGap();
        }
      }
      heads.push(dense);
    }
    if (value !== raw.length || at !== raw.length - count || seen <= count) {
      throw new Error('attention payload does not match its layout');
    }
    return heads;
  };

  ns.decodeSection = async function (text, layout) {
    return new ns.SectionData(layout, ns.unpackCells(await ns.inflate(ns.base64ToBytes(text)), layout));
  };

  /* The decoded heads of a section, read a row or a column at a time as sums of bytes over chosen heads. */
  ns.SectionData = function (layout, heads) {
    this.layout = layout;
    this.heads = heads;
    this.tokens = layout.numTokens;
  };

  ns.SectionData.prototype.hasRow = function (query) {
    return query >= this.layout.rowStart && query < this.layout.rowStart + this.layout.rowCount;
  };

  /* out[k] = sum over `slots` of the bytes of query row `query`, key k. */
  ns.SectionData.prototype.fillRow = function (slots, query, out) {
    var base = (query - this.layout.rowStart) * this.tokens;
    out.fill(0);
    for (var s = 0; s < slots.length; s++) {
      var head = this.heads[slots[s]];
      for (var k = 0; k < this.tokens; k++) out[k] += head[base + k];
    }
  };

  /* out[i] = sum over `slots` of the bytes of query i on key `key`; 0 for rows not held. */
  ns.SectionData.prototype.fillColumn = function (slots, key, out) {
    var start = this.layout.rowStart, rows = this.layout.rowCount;
    out.fill(0);
    for (var s = 0; s < slots.length; s++) {
      var head = this.heads[slots[s]];
      for (var r = 0; r < rows; r++) out[start + r] += head[r * this.tokens + key];
    }
  };

  var weightTables = {};

  /* Decimal text of every weight sum / divisor, made once per divisor so showing weights allocates nothing. */
  ns.weightTexts = function (divisor) {
    if (!weightTables[divisor]) {
      var table = [];
      for (var s = 0; s <= divisor; s++) table.push(String(s / divisor));
      weightTables[divisor] = table;
    }
    return weightTables[divisor];
  };

  /* Colour levels of one line: sums[k] / bases[k], over the line's max when rowMax; `excluded` gets -1. */
  ns.colourLevels = function (sums, bases, excluded, rowMax, levels) {
    var max = 0, n = sums.length, k;
    for (k = 0; k < n; k++) {
      if (k !== excluded && bases[k] > 0 && sums[k] / bases[k] > max) max = sums[k] / bases[k];
    }
    var scale = ns.COLOUR_LEVELS / (rowMax ? (max || 1) : 1);
    for (k = 0; k < n; k++) {
      levels[k] = k === excluded ? -1 : bases[k] > 0 ? Math.min(ns.COLOUR_LEVELS, Math.round(sums[k] / bases[k] * scale)) : 0;
    }
  };
})(window.attReport);
