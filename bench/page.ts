// `npm run bench:page [-- --quick]`: the review page of hemato serve over a served folder, on 127.0.0.1 only,
// bounded in images and time. A folder of PBC images (1,000; 300 with --quick) is copied to a temporary folder and
// served by hemato serve as its own process. The peer is a client that does what the page does without a browser:
// it fetches each listed image and posts it to /v1/classify, 4 at a time, as the page does. Then Debian's Chromium
// (playwright-core) opens the same folder in the page, and the time until every image is classified is measured,
// with the page's long tasks (over 50 ms on its main thread) and, once done, the time from an arrow key to the
// next frame. The ratio is the page's throughput over the peer's. Progress goes to stderr; the last line on stdout
// is one JSON document.
import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { launchChromium, openReviewPage } from '../test/browser.js';
import { PBC_CLASSES } from '../src/data/dataset.js';

const quick = process.argv.includes('--quick');
const IMAGES = quick ? 300 : 1000;
const CONCURRENCY = 4; // the page's requests in flight (src/serve/page/app.js)
const MAX_SECONDS = 600;
const log = (message: string) => process.stderr.write(`${message}\n`);

/** IMAGES PBC images, taken from every class in turn, copied flat into a new folder. */
function servedFolder(): string {
  const pbc = path.resolve('../shared/data/pbc');
  const lists = PBC_CLASSES.map((label) =>
    readdirSync(path.join(pbc, label))
      .filter((name) => !name.startsWith('.') && /\.jpe?g$/i.test(name))
      .sort()
      .map((name) => path.join(pbc, label, name)),
  );
  const folder = mkdtempSync(path.join(tmpdir(), 'hemato-bench-page-'));
  for (let i = 0; i < IMAGES; i++) {
    const list = lists[i % lists.length];
    const file = list[Math.floor(i / lists.length) % list.length];
    copyFileSync(file, path.join(folder, `${String(i).padStart(5, '0')}-${path.basename(file)}`));
  }
  return folder;
}

async function startServer(folder: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['bin/hemato.js', 'serve', folder, '--host', '127.0.0.1', '--port', '0', '--json'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (data) => resolve(String(data)));
    child.once('exit', (code) => reject(new Error(`hemato serve exited with code ${code}`)));
  });
  return { child, url: JSON.parse(line).url };
}

/** The page's requests without a browser: list the folder, then fetch and classify each image, CONCURRENCY at once. */
async function peer(url: string): Promise<{ img_s: number; errors: number }> {
  const started = Date.now();
  const { files } = (await (await fetch(`${url}/v1/folder`)).json()) as { files: { path: string }[] };
  let next = 0;
  let errors = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < files.length && Date.now() - started < MAX_SECONDS * 1000) {
        const file = files[next++];
        const image = await (await fetch(`${url}/v1/folder/file?path=${encodeURIComponent(file.path)}`)).arrayBuffer();
        const res = await fetch(`${url}/v1/classify?top_k=8`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: image });
        await res.arrayBuffer();
        if (!res.ok) errors++;
      }
    }),
  );
  return { img_s: +(Math.min(next, files.length) / ((Date.now() - started) / 1000)).toFixed(1), errors };
}

interface PageState {
  busy: string | null;
  done: number;
  failed: number;
  longTasks: number[];
}

async function page(url: string) {
  const browser = await launchChromium();
  try {
    const tab = await openReviewPage(await browser.newContext({ viewport: { width: 1280, height: 800 } }), url);
    await tab.evaluate(() => {
      const w = window as unknown as { longTasks: number[] };
      w.longTasks = [];
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) w.longTasks.push(entry.duration);
      }).observe({ type: 'longtask' });
    });
    const started = Date.now();
    await tab.click('#folder-button');
    let state: PageState;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      state = await tab.evaluate(() => ({
        busy: document.querySelector('#progress-text')!.getAttribute('data-busy'),
        done: document.querySelectorAll('#gallery .tile.is-done').length,
        failed: document.querySelectorAll('#gallery .tile.is-error').length,
        longTasks: (window as unknown as { longTasks: number[] }).longTasks,
      }));
      const seconds = (Date.now() - started) / 1000;
      log(`page: ${state.done} of ${IMAGES} classified after ${seconds.toFixed(0)} s, ${state.longTasks.length} long tasks`);
      if ((state.busy === 'false' && state.done + state.failed > 0) || seconds > MAX_SECONDS) break;
    }
    const seconds = (Date.now() - started) / 1000;
    // Once done: from an arrow key to the frame that shows the selection moved.
    await tab.focus('#gallery');
    const keyFrames: number[] = [];
    for (let i = 0; i < 5; i++) {
      const before = Date.now();
      await tab.keyboard.press('ArrowRight');
      await tab.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
      keyFrames.push(Date.now() - before);
    }
    keyFrames.sort((a, b) => a - b);
    const tasks = state.longTasks;
    return {
      img_s: +(state.done / seconds).toFixed(1),
      classified: state.done,
      failed: state.failed,
      seconds: +seconds.toFixed(1),
      long_tasks: tasks.length,
      long_task_max_ms: Math.round(Math.max(0, ...tasks)),
      long_task_total_ms: Math.round(tasks.reduce((a, b) => a + b, 0)),
      key_to_frame_ms: keyFrames[2],
    };
  } finally {
    await browser.close();
  }
}

async function run(what: string, folder: string, measure: (url: string) => Promise<unknown>) {
  const { child, url } = await startServer(folder);
  try {
    log(`${what}: ${IMAGES} images served from ${folder}`);
    return await measure(url);
  } finally {
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

const folder = servedFolder();
try {
  // Each on a fresh server, so that neither starts with the other's warm state.
  const direct = (await run('peer', folder, peer)) as Awaited<ReturnType<typeof peer>>;
  log(`peer: ${direct.img_s} images/s`);
  const shown = (await run('page', folder, page)) as Awaited<ReturnType<typeof page>>;
  console.log(
    JSON.stringify({
      bench: 'page',
      images: IMAGES,
      concurrency: CONCURRENCY,
      peer: direct,
      page: shown,
      ratio_page_over_peer: +(shown.img_s / direct.img_s).toFixed(2),
    }),
  );
} finally {
  rmSync(folder, { recursive: true, force: true });
}
