// The review page over a served folder of many images (Debian's Chromium driven by playwright-core, as in
// serve-page.test.ts): the waiting images get a few tiles and a count, and finished images move into their group
// without the gallery being rebuilt, so its cost per image does not grow with the folder.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { Browser } from 'playwright-core';
import { launchChromium, openReviewPage, SKIP_BROWSER } from './browser.js';
import { startServer } from '../src/serve/server.js';
import { SHARED } from './helpers.js';

const IMAGES = 150;
const WAITING_SHOWN = 48; // as in src/serve/page/app.js

test('the review page shows a folder of many images without rebuilding its gallery', { skip: SKIP_BROWSER, timeout: 150_000 }, async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-page-large-'));
  const cells = path.join(root, 'cells');
  mkdirSync(cells);
  const source = path.join(SHARED, 'data/pbc/lymphocyte');
  const images = readdirSync(source)
    .filter((name) => name.endsWith('.jpg') && !name.startsWith('.'))
    .sort()
    .slice(0, 10);
  for (let i = 0; i < IMAGES; i++) copyFileSync(path.join(source, images[i % images.length]), path.join(cells, `cell-${String(i).padStart(3, '0')}.jpg`));
  const server = await startServer({ folder: cells, port: 0 });
  let browser: Browser | undefined;
  try {
    browser = await launchChromium();
    const page = await openReviewPage(browser, server.url);
    // Count every section the gallery gains or loses from now on.
    await page.evaluate(() => {
      const w = window as unknown as { sectionChanges: number };
      w.sectionChanges = 0;
      new MutationObserver((records) => {
        for (const r of records) w.sectionChanges += r.addedNodes.length + r.removedNodes.length;
      }).observe(document.querySelector('#gallery')!, { childList: true });
    });
    await page.click('#folder-button');
    await page.waitForFunction(() => document.querySelector('#gallery .group-waiting .group-head'));
    const waiting = await page.evaluate(() => ({
      head: document.querySelector('#gallery .group-waiting .group-head')!.textContent!,
      tiles: document.querySelectorAll('#gallery .group-waiting .tile').length,
    }));
    const count = Number(/^Classifying · (\d+)/.exec(waiting.head)?.[1]);
    assert.ok(count > WAITING_SHOWN, `the waiting group counts all ${IMAGES} images it holds, got "${waiting.head}"`);
    assert.ok(waiting.tiles <= WAITING_SHOWN, `at most ${WAITING_SHOWN} waiting tiles, got ${waiting.tiles} for ${count} waiting images`);

    await page
      .waitForFunction(
        (n) =>
          document.querySelector('#progress-text')?.getAttribute('data-busy') === 'false' && document.querySelectorAll('#gallery .tile.is-done').length === n,
        IMAGES,
        { timeout: 120_000 },
      )
      .catch(() => {});
    const done = await page.evaluate(() => ({
      tiles: document.querySelectorAll('#gallery .tile.is-done').length,
      others: document.querySelectorAll('#gallery .tile:not(.is-done)').length,
      progress: document.querySelector('#progress-text')!.textContent,
      groups: [...document.querySelectorAll('#gallery .group')].map((g) => g.className),
      sectionChanges: (window as unknown as { sectionChanges: number }).sectionChanges,
    }));
    assert.equal(done.tiles, IMAGES, `every image classified: ${done.progress}`);
    assert.equal(done.others, 0);
    assert.match(done.progress!, new RegExp(`Classified ${IMAGES} of ${IMAGES}`));
    // Each group's section was added once, and the waiting group's removed once: none was rebuilt as images finished.
    assert.ok(done.groups.length >= 1 && !done.groups.some((c) => c.includes('group-waiting')), done.groups.join(', '));
    assert.ok(
      done.sectionChanges <= 2 * (done.groups.length + 1),
      `${done.sectionChanges} sections added or removed for ${done.groups.length} groups and the waiting one`,
    );
  } finally {
    await browser?.close();
    await server.close();
    rmSync(root, { recursive: true, force: true });
  }
});
