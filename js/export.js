/* Save pictures from the page, offline: a canvas as PNG, heatmaps as SVG, through a Blob and <a download>. */
window.attReport = window.attReport || {};

(function (ns) {
  'use strict';

  var KEEP_URL_MS = 60000;

  /* Offer `blob` as a file download named `filename`. */
  ns.download = function (blob, filename) {
    var url = URL.createObjectURL(blob);
    var link = document.createElement('a');
    link.href = url;
    link.download = filename;
    link.hidden = true;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, KEEP_URL_MS);
  };

  /* A file name made of safe characters only. */
  ns.fileName = function (stem, extension) {
    return String(stem).replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') + '.' + extension;
  };

  /* Save a canvas as PNG, enlarged by a whole factor (sharp cells) until it is at least `minSize` pixels wide. */
  ns.exportCanvasPng = function (canvas, filename, minSize) {
    var factor = Math.max(1, Math.ceil((minSize || 0) / Math.max(1, canvas.width)));
    var copy = document.createElement('canvas');
    copy.width = canvas.width * factor;
    copy.height = canvas.height * factor;
    var context = copy.getContext('2d');
    context.imageSmoothingEnabled = false;
    context.drawImage(canvas, 0, 0, copy.width, copy.height);
    copy.toBlob(function (blob) { ns.download(blob, filename); }, 'image/png');
  };

  /* An empty <svg> element of the given size (the HTML parser gives it the SVG namespace). */
  ns.createSvg = function (width, height) {
    var holder = document.createElement('template');
    holder.innerHTML = '<svg></svg>';
    var svg = holder.content.firstChild;
    ns.svgChild(svg, 'rect', { x: 0, y: 0, width: width, height: height, fill: '#ffffff' });
    svg.setAttribute('width', String(width));
    svg.setAttribute('height', String(height));
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    return svg;
  };

  /* Append an SVG element `name` with attributes to `parent`. */
  ns.svgChild = function (parent, name, attributes) {
    var element = document.createElementNS(parent.namespaceURI, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, String(attributes[key])); });
    parent.appendChild(element);
    return element;
  };

  /* Append text (set as text, never parsed). */
  ns.svgText = function (parent, x, y, text, size) {
    var element = ns.svgChild(parent, 'text', { x: x, y: y, 'font-size': size, 'font-family': 'sans-serif', fill: '#1b1f24' });
    element.textContent = text;
    return element;
  };

  /* Draw rows x cols cells at (x, y); colourAt(r, c) gives a CSS colour or null (nothing drawn); equal runs merge. */
  ns.svgHeatmap = function (parent, x, y, cell, rows, cols, colourAt) {
    var group = ns.svgChild(parent, 'g', { 'shape-rendering': 'crispEdges' });
    for (var r = 0; r < rows; r++) {
      var start = 0, colour = colourAt(r, 0);
      for (var c = 1; c <= cols; c++) {
        var next = c < cols ? colourAt(r, c) : undefined;
        if (next === colour) continue;
        if (colour) {
          ns.svgChild(group, 'rect', { x: x + start * cell, y: y + r * cell, width: (c - start) * cell, height: cell, fill: colour });
        }
        start = c;
        colour = next;
      }
    }
    return group;
  };

  ns.exportSvg = function (svg, filename) {
    var text = new XMLSerializer().serializeToString(svg);
    ns.download(new Blob([text], { type: 'image/svg+xml' }), filename);
  };
})(window.attReport);
