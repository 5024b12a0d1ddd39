// The HTTP service: answers in predict's shape, dynamic batching, the token, CORS, the served folder's walls, and
// every limit answered with a clear 4xx (or 503 with Retry-After), after which the next request still succeeds.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type RunningServer, startServer } from '../src/serve/server.js';
import { multipartBody, NOT_AN_IMAGE, pngBomb } from './bad-inputs.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const image = (cls: string, k = 0) => {
  const name = readdirSync(path.join(PBC, cls))
    .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
    .sort()[k];
  return { name, bytes: readFileSync(path.join(PBC, cls, name)) };
};
const basophil = image('basophil');
const neutrophil = image('neutrophil');

const work = mkdtempSync(path.join(tmpdir(), 'hemato-serve-'));
const cells = path.join(work, 'cells');
const outside = path.join(work, 'outside.jpg');
let server: RunningServer;

before(async () => {
  mkdirSync(path.join(cells, 'sub'), { recursive: true });
  writeFileSync(path.join(cells, 'a.jpg'), basophil.bytes);
  writeFileSync(path.join(cells, 'sub', 'b.jpg'), neutrophil.bytes);
  writeFileSync(path.join(cells, '.hidden.jpg'), basophil.bytes);
  copyFileSync(path.join(cells, 'a.jpg'), outside);
  symlinkSync(outside, path.join(cells, 'link-out.jpg'));
  symlinkSync(path.join(cells, 'a.jpg'), path.join(cells, 'link-in.jpg'));
  mkdirSync(path.join(work, 'elsewhere'));
  writeFileSync(path.join(work, 'elsewhere', 'c.jpg'), basophil.bytes);
  symlinkSync(path.join(work, 'elsewhere'), path.join(cells, 'linked-folder'));
  // Links to folders already listed: a loop to the folder itself, and a second way into sub/.
  symlinkSync(cells, path.join(cells, 'self'));
  symlinkSync(path.join(cells, 'sub'), path.join(cells, 'sublink'));
  server = await startServer({ folder: cells, port: 0, maxBody: 2 ** 20, maxParts: 4, maxQueue: 16 });
});

after(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

const post = (route: string, body: Uint8Array, headers: Record<string, string> = { 'content-type': 'application/octet-stream' }, url = server.url) =>
  fetch(`${url}${route}`, { method: 'POST', body: body as BodyInit, headers });

async function healthy(url = server.url): Promise<void> {
  const response = await post('/v1/classify?top_k=1', neutrophil.bytes, undefined, url);
  assert.equal(response.status, 200, `the next request succeeds: ${response.status === 200 ? '' : await response.clone().text()}`);
  assert.equal((await response.json()).result.predictions[0].label, 'neutrophil');
}

test('POST /v1/classify answers like one entry of predict --json, from a raw body or a multipart part', async () => {
  const raw = await post('/v1/classify?top_k=2&name=cell.jpg', basophil.bytes);
  assert.equal(raw.status, 200);
  const answer = await raw.json();
  assert.equal(answer.model, 'convnext_only_atto');
  assert.equal(answer.sha256, createHash('sha256').update(basophil.bytes).digest('hex'));
  assert.equal(answer.model_info.architecture, 'convnext_only_atto');
  assert.match(answer.model_info.sha256, /^[0-9a-f]{64}$/);
  assert.deepEqual(Object.keys(answer.result), ['file', 'predictions', 'uncertain', 'reasons', 'scale', 'stain']);
  assert.deepEqual(Object.keys(answer), ['model', 'model_info', 'sha256', 'result']);
  assert.equal(answer.result.file, 'cell.jpg');
  assert.equal(answer.result.predictions.length, 2);
  assert.equal(answer.result.predictions[0].label, 'basophil');
  assert.equal(answer.result.scale.source, 'red-cells');

  const { body, contentType } = multipartBody([{ name: 'image', filename: 'b.jpg', bytes: basophil.bytes }]);
  const multi = await (await post('/v1/classify', body, { 'content-type': contentType })).json();
  assert.equal(multi.result.file, 'b.jpg');
  assert.equal(multi.result.predictions.length, 3, 'top-k defaults to 3');
  assert.equal(multi.result.predictions[0].score, answer.result.predictions[0].score, 'the same image gets the same answer either way');

  const given = await (await post('/v1/classify?pixel_size=0.2&tta=false', basophil.bytes)).json();
  assert.deepEqual({ source: given.result.scale.source, um_per_px: given.result.scale.um_per_px }, { source: 'given', um_per_px: 0.2 });
});

test('POST /v1/classify/batch keeps part order and gives a failed image { error, code } in its place', async () => {
  const { body, contentType } = multipartBody([
    { name: 'a', filename: 'n.jpg', bytes: neutrophil.bytes },
    { name: 'b', filename: 'notes.csv', bytes: NOT_AN_IMAGE },
    { name: 'c', filename: 'b.jpg', bytes: basophil.bytes },
  ]);
  const response = await post('/v1/classify/batch?top_k=1', body, { 'content-type': contentType });
  assert.equal(response.status, 200);
  const { results, model_info } = await response.json();
  assert.ok(model_info.sha256);
  assert.deepEqual(
    results.map((r: { file: string }) => r.file),
    ['n.jpg', 'notes.csv', 'b.jpg'],
  );
  assert.equal(results[0].predictions[0].label, 'neutrophil');
  assert.deepEqual({ code: results[1].code, predictions: results[1].predictions }, { code: 'not-image', predictions: undefined });
  assert.match(results[1].error, /not an image/);
  assert.equal(results[2].predictions[0].label, 'basophil');
});

test('concurrent requests share forward passes (dynamic batching), and /metrics counts them', async () => {
  const before = await batchCounts();
  const answers = await Promise.all(
    Array.from({ length: 12 }, (_, i) => post('/v1/classify?top_k=1', i % 2 ? basophil.bytes : neutrophil.bytes).then((r) => r.json())),
  );
  assert.deepEqual(
    answers.map((a) => a.result.predictions[0].label),
    answers.map((_, i) => (i % 2 ? 'basophil' : 'neutrophil')),
  );
  const now = await batchCounts();
  assert.equal(now.images - before.images, 12);
  assert.ok(now.batches - before.batches < 12, `12 images in ${now.batches - before.batches} forward passes`);
  const text = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(text, /hemato_http_requests_total\{route="\/v1\/classify",status="200"\} \d+/);
  assert.match(text, /hemato_request_duration_seconds_bucket\{le="0\.1",route="\/v1\/classify"\}/);
  assert.match(text, /hemato_queue_length \d+/);
  assert.match(text, /hemato_errors_total\{code="not-image"\} 1/);
  assert.match(text, /hemato_process_resident_memory_bytes \d+/);
});

async function batchCounts(): Promise<{ batches: number; images: number }> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
  return { batches: value('hemato_batch_size_count'), images: value('hemato_batch_size_sum') };
}

test('bad requests get a 4xx with a stable code, and the next request succeeds', async () => {
  const cases: [string, Promise<Response>, number, string][] = [
    ['a non-image', post('/v1/classify', NOT_AN_IMAGE), 422, 'not-image'],
    ['a decompression bomb', post('/v1/classify', await pngBomb()), 413, 'too-large'],
    ['an empty body', post('/v1/classify', new Uint8Array(0)), 400, 'empty'],
    ['a path-traversal file name', post('/v1/classify?name=..%2F..%2Fetc%2Fpasswd', basophil.bytes), 400, 'bad-file-name'],
    ['a path-traversal part name', post('/v1/classify', ...multipart([{ name: 'f', filename: '../../x.jpg', bytes: basophil.bytes }])), 400, 'bad-file-name'],
    ['a truncated multipart body', post('/v1/classify', ...multipart([{ name: 'f', filename: 'a.jpg', bytes: basophil.bytes }], true)), 400, 'bad-request'],
    [
      'too many parts',
      post('/v1/classify/batch', ...multipart(Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, filename: `${i}.jpg`, bytes: basophil.bytes })))),
      413,
      'too-many-parts',
    ],
    [
      'two images on the single route',
      post('/v1/classify', ...multipart([1, 2].map((i) => ({ name: `f${i}`, filename: `${i}.jpg`, bytes: basophil.bytes })))),
      413,
      'too-many-parts',
    ],
    ['a body over the limit', post('/v1/classify', new Uint8Array(2 ** 20 + 1)), 413, 'body-too-large'],
    ['an unknown query parameter', post('/v1/classify?topk=2', basophil.bytes), 400, 'bad-request'],
    ['a top-k out of range', post('/v1/classify?top_k=9', basophil.bytes), 400, 'bad-request'],
    ['a pixel size out of range', post('/v1/classify?pixel_size=-1', basophil.bytes), 400, 'bad-request'],
    ['an unknown label to explain', post('/v1/explain?label=blast', basophil.bytes), 400, 'bad-request'],
    ['an unknown route', fetch(`${server.url}/v1/nothing`), 404, 'not-found'],
  ];
  for (const [what, pending, status, code] of cases) {
    const response = await pending;
    const body = await response.json();
    assert.deepEqual({ what, status: response.status, code: body.code }, { what, status, code });
    assert.ok(typeof body.error === 'string' && body.error.length > 10, `${what}: ${body.error}`);
  }
  await healthy();
});

function multipart(parts: Parameters<typeof multipartBody>[0], truncate = false): [Buffer, Record<string, string>] {
  const { body, contentType } = multipartBody(parts, { truncate });
  return [body, { 'content-type': contentType }];
}

test('a 100 MB body is refused from its declared length, and a body sent in chunks at the limit', async () => {
  const { status, body } = await rawRequest(
    `POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${100 * 2 ** 20}\r\n\r\n`,
    Buffer.alloc(64 * 1024),
  );
  assert.equal(status, 413);
  assert.equal(JSON.parse(body).code, 'body-too-large');
  const chunks = new ReadableStream({
    start(controller) {
      for (let i = 0; i < 3; i++) controller.enqueue(new Uint8Array(512 * 1024));
      controller.close();
    },
  });
  const response = await fetch(`${server.url}/v1/classify`, {
    method: 'POST',
    body: chunks,
    headers: { 'content-type': 'application/octet-stream' },
    duplex: 'half',
  } as RequestInit);
  assert.equal(response.status, 413);
  await healthy();
});

test('a client that sends its request too slowly gets 408, and the next request succeeds', async () => {
  const strict = await startServer({ port: 0, timeoutMs: 1500 });
  try {
    const { status, body } = await rawRequest(
      'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n',
      Buffer.alloc(10),
      10_000,
      strict.url,
    );
    assert.equal(status, 408);
    assert.equal(JSON.parse(body).code, 'request-timeout');
    await healthy(strict.url);
  } finally {
    await strict.close();
  }
});

/** Sends bytes on a raw socket and reads the status line and body of the answer (the server may close early). */
function rawRequest(head: string, body: Buffer, waitMs = 5000, url = server.url): Promise<{ status: number; body: string }> {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    let received = '';
    const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${waitMs} ms`)), waitMs);
    socket.on('data', (data) => {
      received += data.toString('latin1');
    });
    socket.on('error', (error) => (received ? undefined : reject(error)));
    socket.on('close', () => {
      clearTimeout(timer);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(received)?.[1]);
      if (!status) reject(new Error(`no HTTP answer: ${JSON.stringify(received.slice(0, 200))}`));
      else resolve({ status, body: received.slice(received.indexOf('{'), received.lastIndexOf('}') + 1) });
    });
    socket.write(head);
    socket.write(body);
    // Half-close nothing: the server answers (or times out) while the socket is still open.
    socket.setTimeout(waitMs);
  });
}

test('POST /v1/explain gives the class-activation map as a PNG overlay, or its numbers with ?format=json', async () => {
  const png = await post('/v1/explain', basophil.bytes);
  assert.equal(png.status, 200);
  assert.equal(png.headers.get('content-type'), 'image/png');
  assert.equal(png.headers.get('x-hemato-label'), 'basophil');
  const classified = (await (await post('/v1/classify', basophil.bytes)).json()).result;
  assert.equal(png.headers.get('x-hemato-uncertain'), String(classified.uncertain));
  assert.equal(png.headers.get('x-hemato-reasons'), classified.reasons.join(', '));
  const bytes = Buffer.from(await png.arrayBuffer());
  assert.deepEqual([...bytes.subarray(1, 4)], [...Buffer.from('PNG')]);
  const json = await (await post('/v1/explain?format=json&label=ig', basophil.bytes)).json();
  assert.equal(json.label, 'ig');
  assert.ok(json.score < 0.5);
  // The flags are the image's, whichever label is explained.
  assert.deepEqual([json.uncertain, json.reasons], [classified.uncertain, classified.reasons]);
  assert.equal(json.cam.length, json.grid[0] * json.grid[1]);
  assert.equal(json.size, 128);
  assert.ok(json.cam.every((v: number) => v >= 0 && v <= 1));
  const bad = await post('/v1/explain', NOT_AN_IMAGE);
  assert.deepEqual({ status: bad.status, code: (await bad.json()).code }, { status: 422, code: 'not-image' });
});

test('the served folder lists its images and reads them, and nothing it does not list is reachable', async () => {
  const listing = await (await fetch(`${server.url}/v1/folder`)).json();
  assert.equal(listing.name, 'cells');
  assert.deepEqual(
    listing.files.map((f: { path: string }) => f.path),
    ['a.jpg', 'link-in.jpg', 'sub/b.jpg'],
  );
  const file = await fetch(`${server.url}/v1/folder/file?path=sub/b.jpg`);
  assert.equal(file.status, 200);
  assert.deepEqual(Buffer.from(await file.arrayBuffer()), neutrophil.bytes);
  const refused = [
    'linked-folder/c.jpg',
    '../outside.jpg',
    'sub/../../outside.jpg',
    '%2E%2E%2Foutside.jpg',
    outside,
    'link-out.jpg',
    '.hidden.jpg',
    'sub',
    'missing.jpg',
    `a.jpg%00`,
    'self/a.jpg',
    'self/self/sub/b.jpg',
    'sublink/b.jpg',
  ];
  for (const rel of refused) {
    const response = await fetch(`${server.url}/v1/folder/file?path=${rel.includes('%') ? rel : encodeURIComponent(rel)}`);
    assert.deepEqual({ rel, status: response.status, code: (await response.json()).code }, { rel, status: 404, code: 'not-found' });
  }
  const raw = await rawRequest('GET /v1/folder/file?path=../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', Buffer.alloc(0));
  assert.equal(raw.status, 404);
  assert.deepEqual(
    listing.skipped,
    [
      { path: 'link-out.jpg', reason: 'outside-folder' },
      { path: 'linked-folder', reason: 'outside-folder' },
      { path: 'self', reason: 'repeated-folder' },
      { path: 'sublink', reason: 'repeated-folder' },
    ],
    'links leading outside are named as such, unfollowed; a folder reached again through a link is listed once, and said so',
  );
});

test("GET /v1/model gives the card without the server's file paths; /healthz and the page answer", async () => {
  const { model_info, card } = await (await fetch(`${server.url}/v1/model`)).json();
  assert.equal(card.classes.length, 8);
  assert.equal(card.model_info.sha256, model_info.sha256);
  assert.equal(card.file, undefined);
  assert.ok(card.provenance);
  assert.deepEqual(await (await fetch(`${server.url}/healthz`)).json(), { status: 'ok', model: 'convnext_only_atto' });
  const page = await fetch(`${server.url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /text\/html/);
  assert.equal((await fetch(`${server.url}/page/..%2Fserver.js`)).status, 404);
});

test('with a token, /v1/* and /metrics need it and /healthz stays open; CORS answers only the given origin', async () => {
  const guarded = await startServer({ port: 0, token: 's3cret', cors: 'https://lab.example' });
  try {
    const denied = await post('/v1/classify', basophil.bytes, undefined, guarded.url);
    assert.equal(denied.status, 401);
    assert.equal((await denied.json()).code, 'unauthorized');
    assert.equal((await fetch(`${guarded.url}/metrics`)).status, 401);
    for (const encoded of ['/%761/model', '/v1/%6dodel', '/%6detrics']) {
      assert.equal((await fetch(`${guarded.url}${encoded}`)).status, 401, `${encoded} is the same route, and needs the token too`);
    }
    assert.equal((await fetch(`${guarded.url}/v1/model`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    assert.equal((await fetch(`${guarded.url}/healthz`)).status, 200);
    const allowed = await fetch(`${guarded.url}/v1/model`, { headers: { authorization: 'Bearer s3cret', origin: 'https://lab.example' } });
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers.get('access-control-allow-origin'), 'https://lab.example');
    const preflight = await fetch(`${guarded.url}/v1/classify`, {
      method: 'OPTIONS',
      headers: { origin: 'https://lab.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
    });
    assert.equal(preflight.status, 204);
    const other = await fetch(`${guarded.url}/healthz`, { headers: { origin: 'https://evil.example' } });
    assert.notEqual(other.headers.get('access-control-allow-origin'), 'https://evil.example');
  } finally {
    await guarded.close();
  }
  const open = await fetch(`${server.url}/healthz`, { headers: { origin: 'https://lab.example' } });
  assert.equal(open.headers.get('access-control-allow-origin'), null, 'CORS is off without --cors');
});

test('a full queue answers 503 with Retry-After, a request not answered in time 503 timeout, and the server recovers', async () => {
  // The first image would wait up to 6 s for company: the queue (1 image) is full meanwhile.
  const slow = await startServer({ port: 0, maxQueue: 1, maxParts: 1, batchWaitMs: 6000, timeoutMs: 3000 });
  try {
    const first = post('/v1/classify', basophil.bytes, undefined, slow.url);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const full = await post('/v1/classify', basophil.bytes, undefined, slow.url);
    assert.equal(full.status, 503);
    assert.equal(full.headers.get('retry-after'), '1');
    assert.equal((await full.json()).code, 'queue-full');
    const late = await first;
    assert.equal(late.status, 503);
    assert.equal((await late.json()).code, 'timeout');
  } finally {
    await slow.close();
  }
});

test('hemato serve --json prints {url, model} once listening, and SIGTERM finishes accepted work before it stops', async () => {
  const child = spawn(process.execPath, ['bin/hemato.js', 'serve', '--port', '0', '--json', '--batch-wait-ms', '300'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (d) => resolve(String(d)));
      child.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
    });
    const { url, model } = JSON.parse(line);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(model, 'convnext_only_atto');
    const accepted = post('/v1/classify', basophil.bytes, undefined, url);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const response = await accepted;
    assert.equal(response.status, 200, 'the request accepted before SIGTERM is answered');
    assert.equal(await exited, 0);
    assert.match(stderr, /SIGTERM: finishing accepted requests/);
  } finally {
    child.kill('SIGKILL');
  }
});

test('hemato serve refuses bad flags with exit 2, and a missing model with its reason', async () => {
  const run = (...args: string[]) =>
    new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['bin/hemato.js', 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => {
        stderr += d;
      });
      child.once('exit', (code) => resolve({ code, stderr }));
    });
  assert.equal((await run('--port', '70000')).code, 2);
  assert.equal((await run('--max-batch', '0')).code, 2);
  const missing = await run('--model', path.join(work, 'none.safetensors'), '--port', '0');
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /none\.safetensors/);
  // A port another program holds is named, with what to do.
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  try {
    const taken = await run('--port', String((holder.address() as net.AddressInfo).port));
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /cannot listen on 127\.0\.0\.1:\d+: another program is listening on that port; choose another --port/);
  } finally {
    holder.close();
  }
});
