// Open report pages from file:// in Debian's firefox-esr through WebDriver BiDi (puppeteer-core, never a downloaded
// browser) and print, as one JSON line, what tests/test_firefox.py checks against the store.
// Usage: node smoke.mjs FIREFOX INDEX_HTML CHUNK_HTML TOKEN_INDEX [INLINE_HTML]
// INLINE_HTML: a page holding a notebook's inline report (an iframe srcdoc opened on a section and head).
import puppeteer from 'puppeteer-core';
import { pathToFileURL } from 'node:url';

const [firefox, indexPath, chunkPath, token, inlinePath] = process.argv.slice(2);
const tokenSelector = `[data-view="observer"] [data-index="${token}"]`;

// Record every request, console error and page error of a page, and every file its scripts offer for download.
async function open(browser, path) {
  const page = await browser.newPage();
  const seen = { url: pathToFileURL(path).href, requests: [], consoleErrors: [], pageErrors: [] };
  page.on('request', (request) => seen.requests.push(request.url()));
  page.on('console', (message) => { if (message.type() === 'error') seen.consoleErrors.push(message.text()); });
  page.on('pageerror', (error) => seen.pageErrors.push(String(error)));
  await page.goto(seen.url, { waitUntil: 'load' });
  await page.evaluate(() => {
    window.smokeDownloads = [];
    document.addEventListener('click', (event) => {
      const link = event.target.closest && event.target.closest('a[download]');
      if (link) window.smokeDownloads.push(fetch(link.href).then((response) => response.arrayBuffer())
        .then((bytes) => ({ name: link.download, head: Array.from(new Uint8Array(bytes.slice(0, 8))), size: bytes.byteLength })));
    }, true);
  });
  return { page, seen };
}

// Hover the token in a page or frame's observer view; give the selected head and every token's data-weight.
async function observe(frame) {
  await frame.waitForSelector(tokenSelector);
  await frame.hover(tokenSelector);
  await frame.waitForFunction((selector) => document.querySelector(selector).hasAttribute('data-weight'), {}, tokenSelector);
  return {
    head: await frame.$eval('[data-head][aria-pressed="true"]', (button) => button.getAttribute('data-head')),
    weights: await frame.$$eval('[data-view="observer"] [data-index]',
      (nodes) => nodes.map((node) => Number(node.getAttribute('data-weight')))),
  };
}

// Click an export button and give what its download holds: name, first bytes, size.
async function exported(page, selector) {
  await page.click(selector);
  await page.waitForFunction(() => window.smokeDownloads.length > 0, { timeout: 10000 });
  return page.evaluate(() => window.smokeDownloads[0]);
}

const browser = await puppeteer.launch({
  browser: 'firefox', executablePath: firefox, headless: true,
  extraPrefsFirefox: { 'network.proxy.type': 0, 'app.update.enabled': false, 'browser.shell.checkDefaultBrowser': false },
});
try {
  const index = await open(browser, indexPath);
  await index.page.waitForSelector('[data-grid-export="png"]');
  index.seen.gridPng = await exported(index.page, '[data-grid-export="png"]');

  const chunk = await open(browser, chunkPath);
  Object.assign(chunk.seen, await observe(chunk.page));
  chunk.seen.matrixPng = await exported(chunk.page, '[data-export="png"]');
  chunk.seen.userAgent = await chunk.page.evaluate(() => navigator.userAgent);
  const result = { index: index.seen, chunk: chunk.seen };
  if (inlinePath) {
    const inline = await open(browser, inlinePath);
    const frame = await (await inline.page.waitForSelector('iframe.att-report-inline')).contentFrame();
    Object.assign(inline.seen, await observe(frame));
    inline.seen.frameUrl = await frame.evaluate(() => location.href);
    // Follow a link to another section: it must stay inside the frame.
    const target = await frame.$$eval('a[href^="#section="]',
      (links) => links.map((link) => link.getAttribute('href')).find((href) => href !== location.hash));
    await frame.click(`a[href="${target}"]`);
    await frame.waitForFunction((href) => location.hash === href, {}, target);
    inline.seen.clicked = target;
    inline.seen.clickedUrl = await frame.evaluate(() => location.href);
    inline.seen.parentUrl = await inline.page.evaluate(() => location.href);
    result.inline = inline.seen;
  }
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  await browser.close();
}
