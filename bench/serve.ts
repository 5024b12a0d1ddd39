// `npm run bench:serve [-- --quick]`: hemato serve under load and abuse, on 127.0.0.1 only, bounded in requests
// and time. The bundled model at the engine's default precision: its in-process batch throughput (classifyBatch
// of 64 encoded images, the peer), then the server started as its own process and driven by autocannon with 1, 8
// and 32 clients sending single-image requests (10,000 in all; 1,000 with --quick), the RSS before and after, an
// idle server's single-request latency, and each abuse answered with a 4xx before a good request succeeds.
// Progress goes to stderr; the last line on stdout is one JSON document.
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import autocannon from 'autocannon';
import * as E from '../src/engine/index.js';
import { loadClassifier } from '../src/api/classifier.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { endToEnd, median } from './end-to-end.js';
import { multipartBody, NOT_AN_IMAGE, pngBomb } from '../test/bad-inputs.js';

const quick = process.argv.includes('--quick');
const log = (message: string) => process.stderr.write(`${message}\n`);
const pbc = path.resolve('../shared/data/pbc');
const TOTAL = quick ? 1000 : 10_000;
/** Requests per level of concurrency, and the most seconds each may take. */
const PHASES = [
  { clients: 1, amount: Math.round(TOTAL * 0.05), maxSeconds: 120 },
  { clients: 8, amount: Math.round(TOTAL * 0.3), maxSeconds: 300 },
  { clients: 32, amount: TOTAL - Math.round(TOTAL * 0.05) - Math.round(TOTAL * 0.3), maxSeconds: 600 },
];

async function inProcess(images: Buffer[]): Promise<{ singleMs: number; batchImgS: number; precision: string }> {
  const classifier = await loadClassifier();
  try {
    return { ...(await endToEnd(classifier, images, quick)), precision: classifier.precision };
  } finally {
    classifier.dispose();
  }
}

async function startServer(): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['bin/hemato.js', 'serve', '--host', '127.0.0.1', '--port', '0', '--json', '--timeout', '5'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise<string>((resolve, reject) => {
    child.stdout!.once('data', (data) => resolve(String(data)));
    child.once('exit', (code) => reject(new Error(`hemato serve exited with code ${code}`)));
  });
  return { child, url: JSON.parse(line).url };
}

async function rss(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^hemato_process_resident_memory_bytes (\d+)/m.exec(text)?.[1]);
}

async function load(url: string, images: Buffer[], clients: number, amount: number, maxSeconds: number) {
  const result = await autocannon({
    url,
    connections: clients,
    amount,
    duration: maxSeconds,
    timeout: 30,
    requests: images.map((body) => ({ method: 'POST' as const, path: '/v1/classify?top_k=1', headers: { 'content-type': 'application/octet-stream' }, body })),
  });
  return {
    clients,
    requests: result.requests.total,
    img_s: +(result.requests.total / result.duration).toFixed(1),
    p50_ms: result.latency.p50,
    p99_ms: result.latency.p99,
    errors: result.errors + result.timeouts + result.non2xx,
  };
}

/** Each abuse's status, and whether a good request right after it succeeded. */
async function abuse(url: string, good: Buffer): Promise<Record<string, { status: number; next_ok: boolean }>> {
  const post = (route: string, body: Uint8Array, type = 'application/octet-stream') =>
    fetch(`${url}${route}`, { method: 'POST', body: body as BodyInit, headers: { 'content-type': type } }).then(async (r) => {
      await r.arrayBuffer();
      return r.status;
    });
  const truncated = multipartBody([{ name: 'image', filename: 'cell.jpg', bytes: good }], { truncate: true });
  const traversal = multipartBody([{ name: 'image', filename: '../../etc/passwd', bytes: good }]);
  const cases: [string, () => Promise<number>][] = [
    ['truncated_multipart', () => post('/v1/classify', truncated.body, truncated.contentType)],
    [
      'body_100mb',
      () =>
        rawStatus(
          url,
          `POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${100 * 2 ** 20}\r\n\r\n`,
          Buffer.alloc(16 * 1024),
          10_000,
        ),
    ],
    ['decompression_bomb', async () => post('/v1/classify', await pngBomb())],
    ['non_image', () => post('/v1/classify', NOT_AN_IMAGE)],
    ['path_traversal_name', () => post('/v1/classify', traversal.body, traversal.contentType)],
    [
      'path_traversal_folder',
      () =>
        fetch(`${url}/v1/folder/file?path=..%2F..%2Fetc%2Fpasswd`).then(async (r) => {
          await r.arrayBuffer();
          return r.status;
        }),
    ],
    [
      'slow_client',
      () =>
        rawStatus(
          url,
          'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n',
          Buffer.alloc(100),
          20_000,
        ),
    ],
  ];
  const outcome: Record<string, { status: number; next_ok: boolean }> = {};
  for (const [name, run] of cases) {
    const status = await run().catch(() => 0);
    outcome[name] = { status, next_ok: (await post('/v1/classify', good)) === 200 };
    log(`  ${name}: ${status}, next request ${outcome[name].next_ok ? 'ok' : 'FAILED'}`);
  }
  return outcome;
}

/** The status of the answer to bytes sent on a raw socket, which the server may answer before reading them all. */
function rawStatus(url: string, head: string, body: Buffer, waitMs: number): Promise<number> {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    let received = '';
    const timer = setTimeout(() => socket.destroy(), waitMs);
    socket.on('data', (data) => {
      received += data.toString('latin1');
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(received)?.[1] ?? 0));
    });
    socket.write(head);
    socket.write(body);
  });
}

async function main(): Promise<void> {
  const files = PBC_CLASSES.flatMap((c) =>
    readdirSync(path.join(pbc, c))
      .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
      .sort()
      .slice(0, 4)
      .map((f) => path.join(pbc, c, f)),
  );
  const images = files.map((f) => readFileSync(f));
  log(`in-process: single image and classifyBatch of 64 (${images.length} PBC images)`);
  const peer = await inProcess(images);
  log(`  single ${peer.singleMs.toFixed(1)} ms, batch ${peer.batchImgS.toFixed(1)} img/s (${peer.precision})`);

  const { child, url } = await startServer();
  try {
    // Warm up at the largest concurrency, so that the RSS compared below starts with the biggest batches' buffers
    // allocated; what grows after it is what requests leave behind.
    await load(url, images, 32, quick ? 128 : 512, 120);
    const idle: number[] = [];
    for (let i = 0; i < (quick ? 12 : 40); i++) {
      const start = performance.now();
      const response = await fetch(`${url}/v1/classify?top_k=1`, {
        method: 'POST',
        body: images[i % images.length] as BodyInit,
        headers: { 'content-type': 'application/octet-stream' },
      });
      await response.arrayBuffer();
      idle.push(performance.now() - start);
    }
    const idleMs = median(idle.slice(2));
    const rssBefore = await rss(url);
    const phases = [];
    for (const phase of PHASES) {
      log(`load: ${phase.clients} client(s), ${phase.amount} requests`);
      const result = await load(url, images, phase.clients, phase.amount, phase.maxSeconds);
      log(`  ${result.img_s} img/s, p50 ${result.p50_ms} ms, p99 ${result.p99_ms} ms, errors ${result.errors}`);
      phases.push(result);
    }
    const rssAfter = await rss(url);
    log('abuse');
    const abuses = await abuse(url, images[0]);
    const at32 = phases[2];
    const at8 = phases[1];
    const cpu = E.cpuFeatures();
    console.log(
      JSON.stringify({
        bench: 'serve',
        quick,
        model: 'bundled convnext-atto',
        precision: peer.precision,
        threads: E.numThreads(),
        cpu: { model: cpu.model, amx: cpu.amx, avx512_bf16: cpu.avx512bf16 },
        peer_in_process: { single_image_ms: +peer.singleMs.toFixed(1), batch_img_s: +peer.batchImgS.toFixed(1) },
        idle_single_request_ms: +idleMs.toFixed(1),
        idle_ratio_vs_single_image: +(idleMs / peer.singleMs).toFixed(2),
        phases,
        throughput_ratio_vs_batch_32_clients: +(at32.img_s / peer.batchImgS).toFixed(2),
        p99_limit_32_clients_ms: +((2 * 32 * 1000) / at32.img_s).toFixed(0),
        requests_total: phases.reduce((sum, p) => sum + p.requests, 0),
        rss_mb: { before: +(rssBefore / 2 ** 20).toFixed(1), after: +(rssAfter / 2 ** 20).toFixed(1), growth: +((rssAfter - rssBefore) / 2 ** 20).toFixed(1) },
        abuse: abuses,
        abuse_all_4xx_and_recovered: Object.values(abuses).every((a) => a.status >= 400 && a.status < 500 && a.next_ok),
        goals: { throughput_ratio_vs_batch_32_clients: 0.8, errors_32_clients: 0, rss_growth_mb: 50, p99_8_clients_ms: 250, idle_ratio_vs_single_image: 1.5 },
        met: {
          throughput: at32.img_s >= 0.8 * peer.batchImgS,
          errors: at32.errors === 0,
          rss: (rssAfter - rssBefore) / 2 ** 20 <= 50,
          p99_8_clients: at8.p99_ms <= 250,
          p99_32_clients: at32.p99_ms <= (2 * 32 * 1000) / at32.img_s,
          idle: idleMs <= 1.5 * peer.singleMs,
        },
      }),
    );
  } finally {
    child.kill('SIGTERM');
  }
}

await main();
