// The review page classifies every image the server lists, whatever its name: a backslash, a newline or a tab in
// a file name is no reason to fail it (Debian's Chromium driven by playwright-core, as in serve-page.test.ts).
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { Browser } from 'playwright-core';
import { launchChromium, openReviewPage, SKIP_BROWSER } from './browser.js';
import { startServer } from '../src/serve/server.js';
import { SHARED } from './helpers.js';

const NAMES = ['back\\slash.jpg', 'new\nline.jpg', 'tab\there.jpg', 'plain.jpg'];

test('the review page classifies served images whose names hold a backslash, a newline or a tab', { skip: SKIP_BROWSER, timeout: 90_000 }, async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-page-names-'));
  const cells = path.join(root, 'cells');
  mkdirSync(cells);
  const source = path.join(SHARED, 'data/pbc/basophil');
  const [image] = readdirSync(source)
    .filter((name) => name.endsWith('.jpg') && !name.startsWith('.'))
    .sort();
  for (const name of NAMES) copyFileSync(path.join(source, image), path.join(cells, name));
  const server = await startServer({ folder: cells, port: 0 });
  let browser: Browser | undefined;
  try {
    browser = await launchChromium();
    const page = await openReviewPage(browser, server.url);
    await page.click('#folder-button');
    await page
      .waitForFunction(
        () => document.querySelector('#progress-text')?.getAttribute('data-busy') === 'false' && document.querySelectorAll('#gallery .tile').length > 0,
        null,
        {
          timeout: 45_000,
        },
      )
      .catch(() => {});
    const tiles = await page
      .locator('#gallery .tile')
      .evaluateAll((els) =>
        els.map((el) => ({ file: (el as HTMLElement).dataset.file, done: el.classList.contains('is-done'), label: el.getAttribute('aria-label') })),
      );
    assert.deepEqual(
      tiles.filter((t) => !t.done),
      [],
      'every listed image is classified',
    );
    assert.deepEqual(tiles.map((t) => t.file).sort(), [...NAMES].sort());
  } finally {
    await browser?.close();
    await server.close();
    rmSync(root, { recursive: true, force: true });
  }
});
