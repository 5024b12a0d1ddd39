// The review page of `hemato serve` in a real browser (Debian's Chromium driven by playwright-core): drop PBC images,
// reclassify and confirm cells with the keyboard, watch the differential, export CSV and labels CSV, open the served
// folder, and find the decisions again after a reload. HEMATO_SCREENSHOT=FILE keeps the final screenshot there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, SKIP_BROWSER } from './browser.js';
import sharp from 'sharp';
import { parseCsv } from '../src/data/csv.js';
import { listCsvDataset } from '../src/data/dataset.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const DROPPED_CLASSES = ['basophil', 'ig', 'monocyte', 'platelet'];
const SERVED_CLASSES = ['basophil', 'platelet'];

type Server = ChildProcessByStdio<null, Readable, Readable>;

/** Two images of each class, copied flat into `dropDir`; the first two of SERVED_CLASSES also into `servedDir/<class>/`. */
function fixtures(root: string): { dropDir: string; servedDir: string; dropped: string[]; served: string[] } {
  const dropDir = path.join(root, 'dropped');
  const servedDir = path.join(root, 'cells');
  mkdirSync(dropDir, { recursive: true });
  const dropped: string[] = [];
  const served: string[] = [];
  for (const label of DROPPED_CLASSES) {
    const names = readdirSync(path.join(PBC, label))
      .filter((n) => !n.startsWith('.') && /\.jpe?g$/i.test(n))
      .sort()
      .slice(0, 2);
    assert.equal(names.length, 2, `${PBC}/${label} should hold PBC images`);
    for (const name of names) {
      copyFileSync(path.join(PBC, label, name), path.join(dropDir, name));
      dropped.push(name);
      if (SERVED_CLASSES.includes(label)) {
        mkdirSync(path.join(servedDir, label), { recursive: true });
        copyFileSync(path.join(PBC, label, name), path.join(servedDir, label, name));
        served.push(`${label}/${name}`);
      }
    }
  }
  return { dropDir, servedDir, dropped, served };
}

/** Starts `hemato serve FOLDER --port 0 --json` and resolves with its URL once it listens. */
function startServer(folder: string): { server: Server; url: Promise<string> } {
  const server = spawn(process.execPath, ['bin/hemato.js', 'serve', folder, '--port', '0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  server.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const url = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`hemato serve printed no URL within 60 s\nstderr: ${stderr}`)), 60_000);
    server.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      for (const line of stdout.split('\n')) {
        if (!line.trim().startsWith('{')) continue;
        try {
          const info = JSON.parse(line) as { url?: string };
          if (info.url) {
            clearTimeout(timer);
            resolve(info.url);
          }
        } catch {
          // a partial line: wait for the rest
        }
      }
    });
    server.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`hemato serve exited (${code ?? signal}) before listening\nstderr: ${stderr}`));
    });
  });
  return { server, url };
}

async function stopServer(server: Server): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
  server.kill('SIGTERM');
  const timer = setTimeout(() => server.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Dispatches dragenter, dragover and drop carrying the given files, as a drag from the desktop would. */
async function dropFiles(page: Page, files: string[]): Promise<void> {
  const payload = files.map((file) => ({ name: path.basename(file), base64: readFileSync(file).toString('base64') }));
  const dataTransfer = await page.evaluateHandle((items) => {
    const transfer = new DataTransfer();
    for (const item of items) {
      const bytes = Uint8Array.from(atob(item.base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], item.name, { type: 'image/jpeg' }));
    }
    return transfer;
  }, payload);
  for (const type of ['dragenter', 'dragover', 'drop']) await page.dispatchEvent('#gallery', type, { dataTransfer });
  await dataTransfer.dispose();
}

/** Waits until no image is waiting and `count` cells are classified; says what the gallery holds if not. */
async function waitForCells(page: Page, count: number): Promise<void> {
  await page
    .waitForFunction(
      (n) =>
        document.querySelector('#progress-text')?.getAttribute('data-busy') === 'false' && document.querySelectorAll('#gallery .tile.is-done').length === n,
      count,
      { timeout: 45_000 },
    )
    .catch(() => {});
  const tiles = await page
    .locator('#gallery .tile')
    .evaluateAll((els) => els.map((el) => `${(el as HTMLElement).dataset.file}: ${el.className} ${el.getAttribute('aria-label')}`));
  assert.equal(
    tiles.filter((t) => t.includes('is-done')).length,
    count,
    `${count} cells classified, found:\n${tiles.join('\n')}\n${await text(page, '#progress-text')}`,
  );
}

/** Waits (up to 5 s) for a tile's attribute to take a value, then asserts it, since the page renders on the next frame. */
async function expectTile(page: Page, file: string, attribute: string, value: string, message?: string): Promise<void> {
  await page
    .waitForFunction(([f, a, v]) => document.querySelector(`#gallery .tile[data-file="${f}"]`)?.getAttribute(a) === v, [file, attribute, value], {
      timeout: 5_000,
    })
    .catch(() => {});
  assert.equal(await tile(page, file).getAttribute(attribute), value, message ?? `${file}: ${attribute}`);
}

const tile = (page: Page, file: string) => page.locator(`#gallery .tile[data-file="${file}"]`);
const count = async (page: Page, label: string) => Number(await page.locator(`#differential tr[data-label="${label}"] .count`).textContent());
const text = async (page: Page, selector: string) => (await page.locator(selector).textContent())?.trim() ?? '';

async function downloadText(page: Page, button: string): Promise<{ name: string; body: string }> {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
  const file = await download.path();
  return { name: download.suggestedFilename(), body: readFileSync(file, 'utf8') };
}

function rowsByFile(csv: string): { header: string[]; rows: Map<string, Record<string, string>> } {
  const [header, ...lines] = parseCsv(csv);
  const rows = new Map<string, Record<string, string>>();
  for (const line of lines) rows.set(line[0], Object.fromEntries(header.map((name, i) => [name, line[i]])));
  return { header, rows };
}

test(
  'the review page classifies dropped images, takes keyboard decisions, exports them and keeps them over a reload',
  { skip: SKIP_BROWSER, timeout: 150_000 },
  async (t) => {
    const root = mkdtempSync(path.join(tmpdir(), 'hemato-page-'));
    const { dropDir, servedDir, dropped, served } = fixtures(root);
    const { server, url } = startServer(servedDir);
    let browser: Browser | undefined;
    try {
      const base = await url;
      browser = await launchChromium();
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
      const page = await context.newPage();
      const pageErrors: string[] = [];
      page.on('pageerror', (error) => pageErrors.push(error.message));
      // The server's content-security policy reports what it blocks here: the page must need nothing it forbids.
      page.on('console', (message) => {
        if (message.type() === 'error' && /Content Security Policy/.test(message.text())) pageErrors.push(message.text());
      });
      await page.goto(base);
      await page.waitForFunction(() => document.querySelectorAll('#differential tbody tr').length > 0);
      const classes = await page.locator('#differential tbody tr').evaluateAll((rows) => rows.map((r) => (r as HTMLElement).dataset.label!));
      assert.equal(classes.length, 8, "the differential lists the model's 8 classes");

      // Drop the images and wait for the gallery.
      await dropFiles(
        page,
        dropped.map((name) => path.join(dropDir, name)),
      );
      await waitForCells(page, dropped.length);
      assert.match(await text(page, '#progress-text'), new RegExp(`Classified ${dropped.length} of ${dropped.length}`));
      assert.equal(await text(page, '#total-count'), String(dropped.length));

      // Reclassify A (also in the served folder) with its digit key.
      const a = dropped[0];
      const b = dropped.find((name) => !served.some((p) => p.endsWith(`/${name}`)))!;
      const predictedA = (await tile(page, a).getAttribute('data-predicted'))!;
      const target = classes.find((label) => label !== predictedA)!;
      const before = { predicted: await count(page, predictedA), target: await count(page, target) };
      await tile(page, a).click();
      await expectTile(page, a, 'aria-selected', 'true', 'a click selects the tile');
      await page.keyboard.press(String(classes.indexOf(target) + 1));
      await expectTile(page, a, 'data-reviewed', 'true');
      await expectTile(page, a, 'data-final', target);
      assert.equal(await count(page, predictedA), before.predicted - 1, 'the predicted class lost the cell');
      assert.equal(await count(page, target), before.target + 1, 'the new class gained the cell');
      assert.equal(await text(page, '#changed-count'), '1');
      assert.equal(await text(page, '#reviewed-count'), '1');

      // The selection moved on (unless A was the last cell): Enter confirms that cell, z undoes it.
      const advanced = (await tile(page, a).getAttribute('aria-selected')) === 'false';
      await page.keyboard.press('Enter');
      await page.waitForFunction((n) => document.querySelector('#reviewed-count')?.textContent === n, advanced ? '2' : '1');
      await page.keyboard.press('z');
      await page.waitForFunction(() => document.querySelector('#reviewed-count')?.textContent === '1');
      await expectTile(page, a, 'data-final', target, 'undo took back only the last decision');

      // Confirm B with Space after stepping away from it and back with the arrow keys.
      await tile(page, b).click();
      await expectTile(page, b, 'aria-selected', 'true');
      const order = await page.locator('#gallery .tile').evaluateAll((tiles) => tiles.map((el) => (el as HTMLElement).dataset.file));
      const [away, back] = order.indexOf(b) === order.length - 1 ? ['ArrowLeft', 'ArrowRight'] : ['ArrowRight', 'ArrowLeft'];
      await page.keyboard.press(away);
      await expectTile(page, b, 'aria-selected', 'false', 'the arrow keys move the selection');
      await page.keyboard.press(back);
      await expectTile(page, b, 'aria-selected', 'true', 'and back');
      await page.keyboard.press(' ');
      await page.waitForFunction(() => document.querySelector('#reviewed-count')?.textContent === '2');
      const predictedB = (await tile(page, b).getAttribute('data-predicted'))!;

      // The keys dialog.
      await page.keyboard.press('?');
      assert.ok(await page.locator('#help').evaluate((d) => (d as HTMLDialogElement).open), '? shows the keys');
      await page.keyboard.press('Escape');

      // Export: the CSV holds every cell with its decision and the model's identity.
      const csv = await downloadText(page, '#export-csv');
      assert.match(csv.name, /\.csv$/);
      const { header, rows } = rowsByFile(csv.body);
      for (const column of ['file', 'sha256', 'predicted', 'final', 'changed', 'reviewed', 'model', 'model_sha256', 'decided_at'])
        assert.ok(header.includes(column), `the CSV has a ${column} column`);
      assert.equal(rows.size, dropped.length);
      const rowA = rows.get(a)!;
      assert.deepEqual([rowA.predicted, rowA.final, rowA.changed, rowA.reviewed], [predictedA, target, 'true', 'true']);
      assert.match(rowA.sha256, /^[0-9a-f]{64}$/);
      assert.ok(rowA.model.length > 0 && /^[0-9a-f]{64}$/.test(rowA.model_sha256), 'each row names the model and its sha256');
      assert.ok(!Number.isNaN(Date.parse(rowA.decided_at)), 'a decision has its time');
      assert.deepEqual([rows.get(b)!.final, rows.get(b)!.changed, rows.get(b)!.reviewed], [predictedB, 'false', 'true']);
      for (const [file, row] of rows) if (file !== a && file !== b) assert.deepEqual([row.changed, row.reviewed, row.decided_at], ['false', 'false', ''], file);

      const json = JSON.parse((await downloadText(page, '#export-json')).body) as { cells: { file: string; final: string; changed: boolean }[] };
      assert.deepEqual(
        json.cells.filter((c) => c.changed).map((c) => [c.file, c.final]),
        [[a, target]],
      );

      // The labels CSV: the reviewed cells, in the form hemato train --images DIR --labels CSV reads.
      const labels = await downloadText(page, '#export-labels');
      assert.equal(labels.body.split('\n')[0], 'file,label', 'the labels CSV header is exactly file,label');
      assert.deepEqual(
        parseCsv(labels.body).slice(1).sort(),
        [
          [a, target],
          [b, predictedB],
        ].sort(),
      );
      writeFileSync(path.join(root, 'labels.csv'), labels.body);
      const listing = await listCsvDataset(path.join(root, 'labels.csv'), dropDir);
      assert.deepEqual([listing.items.length, listing.skipped], [2, []], 'the training reader takes every row');

      // Folder mode: the served folder's images, with A's decision found again by its content.
      await page.click('#folder-button');
      await waitForCells(page, served.length);
      const servedA = served.find((p) => p.endsWith(`/${a}`))!;
      await expectTile(page, servedA, 'data-final', target, 'the decision follows the image into the folder');
      const folderLabels = await downloadText(page, '#export-labels');
      assert.deepEqual(
        parseCsv(folderLabels.body),
        [
          ['file', 'label'],
          [servedA, target],
        ],
        'folder paths are relative to the served folder',
      );
      writeFileSync(path.join(root, 'folder-labels.csv'), folderLabels.body);
      assert.equal((await listCsvDataset(path.join(root, 'folder-labels.csv'), servedDir)).items.length, 1);

      // Reload: the folder opens again with its decisions; dropped images find theirs by hash.
      await page.reload();
      await waitForCells(page, served.length);
      await expectTile(page, servedA, 'data-final', target, 'the decision survived the reload');
      await expectTile(page, servedA, 'data-reviewed', 'true');
      await page.setInputFiles(
        '#file-input',
        dropped.map((name) => path.join(dropDir, name)),
      );
      await waitForCells(page, dropped.length); // the served images dropped again are already here
      await expectTile(page, b, 'data-reviewed', 'true', 'a dropped image finds its decision by hash');
      await expectTile(page, b, 'data-final', predictedB);
      assert.equal(await text(page, '#changed-count'), '1');

      // The detail pane of B, with its class-activation map or the note that there is none.
      await tile(page, b).click();
      await page
        .waitForFunction(
          (name) => {
            const note = document.querySelector('#detail-cam-note') as HTMLElement;
            return document.querySelector('#detail-heading')?.textContent === name && (note.hidden || note.textContent === 'No explanation available');
          },
          b,
          { timeout: 30_000 },
        )
        .catch(() => {});
      assert.equal(await text(page, '#detail-heading'), b, 'the detail pane shows the selected cell');
      assert.equal(await page.locator('#detail-bars li').count(), 8, 'all 8 probabilities are shown');
      const screenshot = process.env.HEMATO_SCREENSHOT ?? path.join(tmpdir(), 'hemato-review-page.png');
      // A palette PNG: about a third of the size, fit for the README.
      writeFileSync(
        screenshot,
        await sharp(await page.screenshot())
          .png({ palette: true, quality: 90, effort: 10 })
          .toBuffer(),
      );
      t.diagnostic(`screenshot: ${screenshot}`);
      assert.deepEqual(pageErrors, [], 'the page threw no errors');
    } finally {
      await browser?.close();
      await stopServer(server);
      rmSync(root, { recursive: true, force: true });
    }
  },
);
