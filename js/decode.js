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

  /* Cells each head holds (the kept lower triangle when causal). */
  function cellsPerHead(layout) {
    var perHead = 0;
    for (var j = 0; j < layout.numTokens; j++) perHead += layout.rowCount - firstRow(layout, j);
    return perHead;
  }

  /* Walk the gap stream once (see encode.py: counts, gaps, non-zero bytes) and note where each head's cells begin:
     the offset of the gap byte of its first non-zero cell, that cell's value index, and the zero cells before it.
     Heads are then unpacked one at a time, on demand, so a page holds only the head it shows. */
  ns.indexHeads = function (raw, layout) {
    var cells = readUint32(raw, 0), count = readUint32(raw, 4), perHead = cellsPerHead(layout);
    if (cells !== perHead * layout.headCount || raw.length < 8 + count) throw new Error('attention payload does not match its layout');
    var end = raw.length - count, at = 8, position = -1, starts = [], head = 0;
    for (var seen = 0; seen < count; seen++) {
      var gapAt = at, gap = raw[at++];
      if (gap === 255) {
        gap = readUint32(raw, at);
        at += 4;
      }
      position += gap + 1;
      while (head < layout.headCount && position >= head * perHead) {
        starts.push({ at: gapAt, value: end + seen, zeros: position - head * perHead, seen: seen });
        head++;
      }
    }
    if (at !== end || position >= cells) throw new Error('attention payload does not match its layout');
    while (head++ < layout.headCount) starts.push(null);  /* heads with no non-zero cell */
    return { starts: starts, count: count };
  };

  /* Add head h's bytes into `dense` (rows x tokens, row-major), from the cursor indexHeads noted. */
  ns.unpackHead = function (raw, layout, index, h, dense) {
    var start = index.starts[h];
    if (!start) return;
    var rows = layout.rowCount, tokens = layout.numTokens, count = index.count;
    var at = start.at, value = start.value, seen = start.seen;
    function nextGap() {
      if (seen === count) return Infinity;
      seen++;
      var gap = raw[at++];
      if (gap === 255) {
        gap = readUint32(raw, at);
        at += 4;
      }
      return gap;
    }
    nextGap();
    var next = start.zeros;
    for (var col = 0; col < tokens; col++) {
      var skip = rows - firstRow(layout, col);
      /* jump over whole runs of zero cells in this column */
      while (skip > 0) {
        if (next >= skip) { next -= skip; break; }
        var r = rows - skip + next;
        skip -= next + 1;
        dense[r * tokens + col] += raw[value++];
        next = nextGap();
      }
    }
  };

  ns.decodeSection = async function (text, layout) {
    var raw = await ns.inflate(ns.base64ToBytes(text));
    return new ns.SectionData(layout, raw, ns.indexHeads(raw, layout));
  };

  /* A decoded section, read a row or a column at a time as sums of bytes over chosen heads (`slots`). Only the plane
     of the slots last asked for is unpacked and kept: one head as bytes, or the sum of several as 16-bit words. */
  ns.SectionData = function (layout, raw, index) {
    this.layout = layout;
    this.raw = raw;
    this.index = index;
    this.tokens = layout.numTokens;
    this.plane = null;
    this.planeSlots = '';
  };

  ns.SectionData.prototype.hasRow = function (query) {
    return query >= this.layout.rowStart && query < this.layout.rowStart + this.layout.rowCount;
  };

  /* The rows x tokens sums of bytes over `slots`, unpacked now unless they are the ones kept. */
  ns.SectionData.prototype.planeOf = function (slots) {
    var key = slots.join(',');
    if (this.planeSlots !== key) {
      this.plane = null;  /* let the old plane go before the new one is made */
      var size = this.layout.rowCount * this.tokens;
      var plane = slots.length === 1 ? new Uint8Array(size) : new Uint16Array(size);
      for (var s = 0; s < slots.length; s++) ns.unpackHead(this.raw, this.layout, this.index, slots[s], plane);
      this.plane = plane;
      this.planeSlots = key;
    }
    return this.plane;
  };

  /* out[k] = sum over `slots` of the bytes of query row `query`, key k. */
  ns.SectionData.prototype.fillRow = function (slots, query, out) {
    var plane = this.planeOf(slots), base = (query - this.layout.rowStart) * this.tokens;
    for (var k = 0; k < this.tokens; k++) out[k] = plane[base + k];
  };

  /* out[i] = sum over `slots` of the bytes of query i on key `key`; 0 for rows not held. */
  ns.SectionData.prototype.fillColumn = function (slots, key, out) {
    var plane = this.planeOf(slots), start = this.layout.rowStart, rows = this.layout.rowCount;
    out.fill(0);
    for (var r = 0; r < rows; r++) out[start + r] = plane[r * this.tokens + key];
  };

  /* The sum over `slots` of the bytes of held row `row` (0-based on this page), key `key`. */
  ns.SectionData.prototype.cell = function (slots, row, key) {
    return this.planeOf(slots)[row * this.tokens + key];
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

  /* Log colour: LOG_DECADES decades below the top of the scale share the levels LOG_FLOOR..COLOUR_LEVELS, and any
     smaller weight that is not zero gets LOG_FLOOR, a shade that still shows. */
  ns.LOG_DECADES = 3;
  var LOG_FLOOR = 8;

  /* The colour level of a share x of the top of the scale (0..1), on the linear or the log scale. */
  ns.colourLevel = function (x, log) {
    if (!(x > 0)) return 0;
    if (!log) return Math.min(ns.COLOUR_LEVELS, Math.round(x * ns.COLOUR_LEVELS));
    var level = Math.round(LOG_FLOOR + (ns.COLOUR_LEVELS - LOG_FLOOR) * (1 + Math.log10(x) / ns.LOG_DECADES));
    return Math.max(LOG_FLOOR, Math.min(ns.COLOUR_LEVELS, level));
  };

  /* Colour levels of one line: sums[k] / bases[k], over the line's max when rowMax, on a log scale when log;
     `excluded` gets -1. */
  ns.colourLevels = function (sums, bases, excluded, rowMax, levels, log) {
    var max = 0, n = sums.length, k;
    if (rowMax) {
      for (k = 0; k < n; k++) {
        if (k !== excluded && bases[k] > 0 && sums[k] / bases[k] > max) max = sums[k] / bases[k];
      }
    }
    var top = rowMax ? (max || 1) : 1;
    for (k = 0; k < n; k++) {
      levels[k] = k === excluded ? -1 : bases[k] > 0 && sums[k] > 0 ? ns.colourLevel(sums[k] / bases[k] / top, log) : 0;
    }
  };
})(window.attReport);
