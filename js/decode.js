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
     the offset of the gap byte of its first non-zero cell, that cell's number, and the zero cells before it. Heads
     are then unpacked one at a time, when first shown. */
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
        starts.push({ at: gapAt, zeros: position - head * perHead, seen: seen });
        head++;
      }
    }
    if (at !== end || position >= cells) throw new Error('attention payload does not match its layout');
    while (head++ < layout.headCount) starts.push({ at: end, zeros: Infinity, seen: count });  /* no non-zero cell left */
    starts.push({ at: end, zeros: Infinity, seen: count });
    return { starts: starts, values: end };
  };

  /* Head h's non-zero bytes, by key column (colStart, colRows, colBytes) and by held row (rowStart, rowKeys,
     rowBytes): a few bytes per non-zero cell, where a dense rows x tokens plane at 8k tokens would be 64 MB. */
  ns.unpackHead = function (raw, layout, index, h) {
    var start = index.starts[h], count = index.starts[h + 1].seen - start.seen;
    var rows = layout.rowCount, tokens = layout.numTokens, Keys = tokens > 65535 ? Uint32Array : Uint16Array;
    var head = {
      colStart: new Int32Array(tokens + 1), colRows: new Keys(count), colBytes: new Uint8Array(count),
      rowStart: new Int32Array(rows + 1), rowKeys: new Keys(count), rowBytes: new Uint8Array(count)
    };
    var at = start.at, value = index.values + start.seen, taken = 0;
    function nextGap() {
      if (taken === count) return Infinity;
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
      head.colStart[col] = taken;
      var skip = rows - firstRow(layout, col);
      /* jump over whole runs of zero cells in this column */
      while (skip > 0) {
        if (next >= skip) { next -= skip; break; }
        var r = rows - skip + next;
        skip -= next + 1;
        head.colRows[taken] = r;
        head.colBytes[taken++] = raw[value++];
        head.rowStart[r + 1]++;
        next = nextGap();
      }
    }
    head.colStart[tokens] = taken;
    for (r = 0; r < rows; r++) head.rowStart[r + 1] += head.rowStart[r];
    var fill = head.rowStart.slice(0, rows);
    for (col = 0; col < tokens; col++) {  /* columns in order, so each row's keys come out sorted */
      for (var p = head.colStart[col]; p < head.colStart[col + 1]; p++) {
        var slot = fill[head.colRows[p]]++;
        head.rowKeys[slot] = col;
        head.rowBytes[slot] = head.colBytes[p];
      }
    }
    return head;
  };

  ns.decodeSection = async function (text, layout) {
    var raw = await ns.inflate(ns.base64ToBytes(text));
    return new ns.SectionData(layout, raw, ns.indexHeads(raw, layout));
  };

  /* A decoded section, read a row or a column at a time as sums of bytes over chosen heads (`slots`). Each head is
     unpacked when first read. */
  ns.SectionData = function (layout, raw, index) {
    this.layout = layout;
    this.raw = raw;
    this.index = index;
    this.tokens = layout.numTokens;
    this.heads = [];
    this.scratch = new Int32Array(layout.numTokens);
  };

  ns.SectionData.prototype.hasRow = function (query) {
    return query >= this.layout.rowStart && query < this.layout.rowStart + this.layout.rowCount;
  };

  ns.SectionData.prototype.head = function (slot) {
    if (!this.heads[slot]) this.heads[slot] = ns.unpackHead(this.raw, this.layout, this.index, slot);
    return this.heads[slot];
  };

  /* out[k] = sum over `slots` of the bytes of query row `query`, key k. */
  ns.SectionData.prototype.fillRow = function (slots, query, out) {
    var r = query - this.layout.rowStart;
    out.fill(0);
    for (var s = 0; s < slots.length; s++) {
      var head = this.head(slots[s]);
      for (var p = head.rowStart[r]; p < head.rowStart[r + 1]; p++) out[head.rowKeys[p]] += head.rowBytes[p];
    }
  };

  /* out[i] = sum over `slots` of the bytes of query i on key `key`; 0 for rows not held. */
  ns.SectionData.prototype.fillColumn = function (slots, key, out) {
    var start = this.layout.rowStart;
    out.fill(0);
    for (var s = 0; s < slots.length; s++) {
      var head = this.head(slots[s]);
      for (var p = head.colStart[key]; p < head.colStart[key + 1]; p++) out[start + head.colRows[p]] += head.colBytes[p];
    }
  };

  /* The non-zero sums over `slots` of held row `row`: their keys into `keys`, sums into `sums`; returns how many. */
  ns.SectionData.prototype.rowEntries = function (slots, row, keys, sums) {
    var scratch = this.scratch, count = 0, s, p, head;
    for (s = 0; s < slots.length; s++) {
      head = this.head(slots[s]);
      for (p = head.rowStart[row]; p < head.rowStart[row + 1]; p++) {
        var key = head.rowKeys[p];
        if (scratch[key] === 0) keys[count++] = key;
        scratch[key] += head.rowBytes[p];
      }
    }
    for (var i = 0; i < count; i++) {
      sums[i] = scratch[keys[i]];
      scratch[keys[i]] = 0;
    }
    return count;
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
