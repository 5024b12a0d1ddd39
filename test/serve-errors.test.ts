// The service's refusals: every route answers an image's failure with the same status, every error is JSON
// {error, code} (malformed HTTP included), a wrong method is 405, query numbers are plain decimals, and the served
// folder names the real cause of a file or folder it cannot read. Also the CLI's flags, refused in their own terms.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { createModel } from '../src/models/index.js';
import { saveModel } from '../src/models/io.js';
import { type RunningServer, startServer } from '../src/serve/server.js';
import { multipartBody, pngBomb } from './bad-inputs.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const images = (cls: string, count: number) =>
  readdirSync(path.join(PBC, cls))
    .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
    .sort()
    .slice(0, count)
    .map((name) => readFileSync(path.join(PBC, cls, name)));
const [basophil] = images('basophil', 1);

const work = mkdtempSync(path.join(tmpdir(), 'hemato-serve-errors-'));
const cells = path.join(work, 'cells');
let server: RunningServer;

before(async () => {
  mkdirSync(cells);
  writeFileSync(path.join(cells, 'a.jpg'), basophil);
  writeFileSync(path.join(cells, 'locked.jpg'), basophil);
  chmodSync(path.join(cells, 'locked.jpg'), 0o000);
  // Another user must be able to reach the folder (see the permission test).
  chmodSync(work, 0o755);
  chmodSync(cells, 0o755);
  server = await startServer({ folder: cells, port: 0, maxBody: 100 * 2 ** 10, maxParts: 4, maxQueue: 16 });
});

after(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

const post = (route: string, body: Uint8Array, headers: Record<string, string> = { 'content-type': 'application/octet-stream' }, url = server.url) =>
  fetch(`${url}${route}`, { method: 'POST', body: body as BodyInit, headers });

function multipart(parts: Parameters<typeof multipartBody>[0]): [Buffer, Record<string, string>] {
  const { body, contentType } = multipartBody(parts);
  return [body, { 'content-type': contentType }];
}

/** The status and the JSON error of an answer: {error, code} (and an image's file and sha256), with a message worth reading. */
async function refusal(response: Response): Promise<{ status: number; code: string; error: string }> {
  const body = await response.json();
  assert.deepEqual(
    Object.keys(body).filter((key) => key !== 'file' && key !== 'sha256'),
    ['error', 'code'],
    JSON.stringify(body),
  );
  assert.ok(body.error.length > 10, body.error);
  return { status: response.status, code: body.code, error: body.error };
}

/** Sends bytes on a raw socket and reads the status line, headers and body of the answer. */
function rawRequest(bytes: string | Buffer, url = server.url): Promise<{ status: number; head: string; body: string }> {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    let received = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
    socket.on('data', (data) => {
      received += data.toString('latin1');
    });
    socket.on('error', (error) => (received ? undefined : reject(error)));
    socket.on('close', () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(received)?.[1]);
      const split = received.indexOf('\r\n\r\n');
      if (!status) reject(new Error(`no HTTP answer: ${JSON.stringify(received.slice(0, 200))}`));
      else resolve({ status, head: received.slice(0, split), body: received.slice(split + 4) });
    });
    socket.end(bytes);
  });
}

test('a decompression bomb is 413 too-large on /v1/explain as on /v1/classify', async () => {
  const bomb = await pngBomb();
  for (const route of ['/v1/classify', '/v1/explain']) {
    assert.deepEqual(pick(await refusal(await post(route, bomb))), { status: 413, code: 'too-large' }, route);
  }
});

test('an empty image is 400 empty, as the raw body or as a file part, on both routes; in a batch it gets its error in place', async () => {
  const empty = multipart([{ name: 'f', filename: 'empty.jpg', bytes: new Uint8Array(0) }]);
  for (const route of ['/v1/classify', '/v1/explain']) {
    assert.deepEqual(pick(await refusal(await post(route, ...empty))), { status: 400, code: 'empty' }, `${route}: an empty file part`);
    assert.deepEqual(pick(await refusal(await post(route, new Uint8Array(0)))), { status: 400, code: 'empty' }, `${route}: an empty body`);
  }
  const batch = await post(
    '/v1/classify/batch',
    ...multipart([
      { name: 'a', filename: 'empty.jpg', bytes: new Uint8Array(0) },
      { name: 'b', filename: 'b.jpg', bytes: basophil },
    ]),
  );
  assert.equal(batch.status, 200);
  const { results } = await batch.json();
  assert.equal(results[0].code, 'empty');
  assert.equal(results[1].predictions[0].label, 'basophil');
});

const pick = ({ status, code }: { status: number; code: string }) => ({ status, code });

test('a model whose scores are NaN gets 500 non-finite-output on /v1/classify and /v1/explain alike', async () => {
  const file = path.join(work, 'nan.safetensors');
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  E.noGrad(() => model.head!.fc.weight.fill_(Number.NaN));
  await saveModel(file, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    temperature: 1,
    uncertaintyThreshold: 0.5,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
  });
  model.dispose();
  const broken = await startServer({ model: file, classifier: { device: 'cpu' }, port: 0 });
  try {
    for (const route of ['/v1/classify', '/v1/explain', '/v1/explain?format=json']) {
      const response = await post(route, basophil, undefined, broken.url);
      assert.equal(response.status, 500, route);
      assert.equal((await response.json()).code, 'non-finite-output', route);
    }
  } finally {
    await broken.close();
  }
});

test('/v1/explain keeps to --timeout like /v1/classify: 503 timeout with Retry-After while the model is busy', async () => {
  // A batch of 64 images with test-time augmentation holds the model for far longer than the 1 s allowed: the
  // explanation sent after it waits its turn and is answered 503 once its second is up.
  const busy = await startServer({ port: 0, maxBatch: 64, maxParts: 64, maxQueue: 64, batchWaitMs: 0, timeoutMs: 1000 });
  try {
    const batch = post(
      '/v1/classify/batch?tta=true',
      ...multipart(images('neutrophil', 64).map((bytes, i) => ({ name: `f${i}`, filename: `${i}.jpg`, bytes }))),
      busy.url,
    );
    for (let i = 0; i < 200 && (await batchesRun(busy.url)) === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(await batchesRun(busy.url), 1, 'the batch went to the model');
    const explained = await post('/v1/explain', basophil, undefined, busy.url);
    assert.deepEqual(pick(await refusal(explained)), { status: 503, code: 'timeout' });
    assert.equal(explained.headers.get('retry-after'), '1');
    await batch;
  } finally {
    await busy.close();
  }
});

async function batchesRun(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^hemato_batch_size_count (\S+)$/m.exec(text)?.[1] ?? 0);
}

test('a multipart body with more than 16 text fields is 413 too-many-parts, saying what the limit is', async () => {
  const fields = Buffer.concat([
    ...Array.from({ length: 17 }, (_, i) => Buffer.from(`--b\r\nContent-Disposition: form-data; name="note${i}"\r\n\r\nx\r\n`)),
    Buffer.from('--b\r\nContent-Disposition: form-data; name="f"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'),
    basophil,
    Buffer.from('\r\n--b--\r\n'),
  ]);
  const tooManyFields = await refusal(await post('/v1/classify', fields, { 'content-type': 'multipart/form-data; boundary=b' }));
  assert.deepEqual(pick(tooManyFields), { status: 413, code: 'too-many-parts' });
  assert.match(tooManyFields.error, /at most 16 text fields/);
});

test('a body over --max-body is refused with the limit as people write it', async () => {
  const overLimit = await refusal(await post('/v1/classify', new Uint8Array(100 * 2 ** 10 + 1)));
  assert.deepEqual(pick(overLimit), { status: 413, code: 'body-too-large' });
  assert.match(overLimit.error, /limit of 100 KiB \(--max-body\)/);
});

test('an encoded body is 415: hemato does not decompress request bodies', async () => {
  const gzipped = await refusal(await post('/v1/classify', basophil, { 'content-type': 'application/octet-stream', 'content-encoding': 'gzip' }));
  assert.deepEqual(pick(gzipped), { status: 415, code: 'unsupported-media-type' });
  assert.match(gzipped.error, /without Content-Encoding/);
});

test('a method a route does not take is 405 with Allow; a path no route has stays 404', async () => {
  const methods: [string, string, string][] = [
    ['GET', '/v1/classify', 'POST'],
    ['PUT', '/v1/classify/batch', 'POST'],
    ['POST', '/healthz', 'GET, HEAD'],
    ['DELETE', '/v1/model', 'GET, HEAD'],
    ['PATCH', '/page/app.js', 'GET, HEAD'],
  ];
  for (const [method, route, allow] of methods) {
    const response = await fetch(`${server.url}${route}`, { method });
    assert.equal(response.headers.get('allow'), allow, `${method} ${route}`);
    assert.deepEqual(pick(await refusal(response)), { status: 405, code: 'method-not-allowed' }, `${method} ${route}`);
  }
  assert.deepEqual(pick(await refusal(await fetch(`${server.url}/v1/nothing`, { method: 'DELETE' }))), { status: 404, code: 'not-found' });
});

test('malformed requests are answered in JSON {error, code} too, also those refused by Node before any route', async () => {
  assert.deepEqual(pick(await refusal(await fetch(`${server.url}/v1/%zz`))), { status: 400, code: 'bad-request' });

  // Refused by Node's HTTP parser, before any route: answered on the socket in the same shape.
  const malformed: [string, string, number, string][] = [
    ['a bad Content-Length', 'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n', 400, 'bad-request'],
    [
      'Content-Length with Transfer-Encoding',
      'POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      400,
      'bad-request',
    ],
    ['an unknown method', 'FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'bad-request'],
    ['no Host header', 'GET /healthz HTTP/1.1\r\n\r\n', 400, 'bad-request'],
    ['an Expect other than 100-continue', 'POST /v1/classify HTTP/1.1\r\nHost: x\r\nExpect: later\r\nContent-Length: 3\r\n\r\nabc', 417, 'expectation-failed'],
    ['a URL over the header limit', `GET /v1/model?${'x'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, 431, 'headers-too-large'],
  ];
  for (const [what, request, status, code] of malformed) {
    const answer = await rawRequest(request);
    assert.match(answer.head, /content-type: application\/json/i, what);
    const body = JSON.parse(answer.body);
    assert.deepEqual({ what, status: answer.status, code: body.code, keys: Object.keys(body).sort() }, { what, status, code, keys: ['code', 'error'] });
  }
  assert.equal((await fetch(`${server.url}/healthz`)).status, 200, 'the server still answers');
});

test('query numbers are plain decimals: hexadecimal, exponents, padding and 1.0 for an integer are refused', async () => {
  for (const query of [
    'top_k=0x3',
    'top_k=1.0',
    'top_k=%201',
    'top_k=1e0',
    'top_k=',
    'pixel_size=0x1',
    'pixel_size=%20%201',
    'pixel_size=1e-1',
    'pixel_size=.5',
  ]) {
    const answer = await refusal(await post(`/v1/classify?${query}`, basophil));
    assert.deepEqual({ query, ...pick(answer) }, { query, status: 400, code: 'bad-request' });
  }
  const answer = await (await post('/v1/classify?top_k=2&pixel_size=0.25', basophil)).json();
  assert.equal(answer.result.predictions.length, 2);
  assert.equal(answer.result.scale.um_per_px, 0.25);
});

test("the token's scheme is case-insensitive; with --cors, an OPTIONS that is no preflight is refused in JSON", async (t) => {
  const guarded = await startServer({ port: 0, token: 's3cret', cors: 'https://lab.example' });
  t.after(() => guarded.close());
  await t.test('the scheme', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER']) {
      const response = await fetch(`${guarded.url}/v1/model`, { headers: { authorization: `${scheme} s3cret` } });
      assert.equal(response.status, 200, scheme);
    }
    assert.equal((await fetch(`${guarded.url}/v1/model`, { headers: { authorization: 'bearer S3CRET' } })).status, 401, 'the token itself is exact');
  });
  await t.test('OPTIONS without Origin', async () => {
    assert.deepEqual(pick(await refusal(await fetch(`${guarded.url}/v1/classify`, { method: 'OPTIONS' }))), { status: 400, code: 'bad-request' });
  });
});

test('a listed file the server may not read is 403 forbidden, and a folder gone while serving is said to be gone', async () => {
  const listing = await (await fetch(`${server.url}/v1/folder`)).json();
  assert.deepEqual(
    listing.files.map((f: { path: string }) => f.path),
    ['a.jpg', 'locked.jpg'],
  );
  // Root reads any file: the read is made as another user.
  const asRoot = process.getuid?.() === 0;
  if (asRoot) process.seteuid!(65534);
  let locked: Response;
  try {
    locked = await fetch(`${server.url}/v1/folder/file?path=locked.jpg`);
  } finally {
    if (asRoot) process.seteuid!(0);
  }
  const denied = await refusal(locked);
  assert.deepEqual(pick(denied), { status: 403, code: 'forbidden' });
  assert.match(denied.error, /cannot read 'locked\.jpg' in the served folder: permission denied/);

  rmSync(cells, { recursive: true, force: true });
  for (const route of ['/v1/folder', '/v1/folder/file?path=a.jpg']) {
    const gone = await refusal(await fetch(`${server.url}${route}`));
    assert.deepEqual(pick(gone), { status: 500, code: 'unreadable' }, route);
    assert.match(gone.error, /the served folder 'cells': it no longer exists/, route);
  }
});

test('hemato serve refuses out-of-range flags in their own terms', async () => {
  const run = (...args: string[]) =>
    new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['bin/hemato.js', 'serve', '--port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => {
        stderr += d;
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, stderr });
      });
    });
  const cases: [string[], RegExp][] = [
    [['--timeout', '999999'], /--timeout .*seconds in 1\.\.3600/],
    [['--max-body', '3G'], /--max-body .*at most 2 GiB/],
    [['--max-queue', '1'], /--max-queue \(1\) must be at least --max-parts \(64\)/],
    [['--batch-wait-ms', '20000'], /--batch-wait-ms .*milliseconds in 0\.\.10000/],
  ];
  for (const [args, message] of cases) {
    const { code, stderr } = await run(...args);
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    assert.match(stderr, message);
    assert.doesNotMatch(stderr, /timeoutMs|maxBody|maxQueue|maxParts|batchWaitMs/, 'no internal names');
  }
});
