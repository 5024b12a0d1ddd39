// `hemato serve`: classification over HTTP on fastify, with the model in a worker thread, dynamic batching, limits
// that answer with a clear 4xx, Prometheus metrics, an optional bearer token and the review page.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { type IncomingMessage, maxHeaderSize, type ServerResponse, STATUS_CODES } from 'node:http';
import { isIP, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import cors from '@fastify/cors';
import multipart from '@fastify/multipart';
import { BUNDLED_MODEL } from '../api/classifier.js';
import { modelCard, type ModelIdentity, readModelFile } from '../api/model-info.js';
import { sizeText } from '../data/files.js';
import { Batcher } from './batcher.js';
import { ServedFolder } from './folder.js';
import { createMetrics } from './metrics.js';
import { ModelWorker, ServeError, statusOf } from './model-worker.js';
import { type Limits, SERVE_DEFAULTS, SERVE_RANGES, type ServeOptions } from './options.js';
import type { ExplainJob, ExplainResult, ImageJob, JobResult } from './protocol.js';

export { SERVE_DEFAULTS, type ServeOptions } from './options.js';

export interface RunningServer {
  url: string;
  app: FastifyInstance;
  identity: ModelIdentity;
  /** Stops taking requests, answers those accepted, then stops the model's worker. */
  close(): Promise<void>;
}

const PAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/serve/page');
const PAGE_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};
/** The page loads and sends nothing but this server's own files and API; images are shown from blob: URLs. */
const PAGE_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/** Seconds a client is asked to wait when the queue is full. */
const RETRY_AFTER_S = 1;
/** Text fields a multipart request may hold besides its images (the server reads none of them). */
const MAX_FIELDS = 16;

interface ClassifyQuery {
  topK: number;
  job: Omit<ImageJob, 'bytes'>;
  name?: string;
}

export async function startServer(options: ServeOptions = {}): Promise<RunningServer> {
  const settings = { ...SERVE_DEFAULTS, ...definedOnly(options) };
  checkSettings(settings);
  const modelFile = options.model ?? BUNDLED_MODEL;
  const file = await readModelFile(modelFile);
  const { file: _path, ...card } = modelCard(file);
  const classes = file.metadata.classes;
  const folder = options.folder === undefined ? null : await ServedFolder.open(options.folder);
  const worker = await ModelWorker.start(modelFile, options.classifier ?? {});
  const byField = options.classifier?.field !== undefined;

  const batcher: Batcher<ImageJob, JobResult> = new Batcher({
    maxBatch: settings.maxBatch,
    waitMs: settings.batchWaitMs,
    maxQueue: settings.maxQueue,
    run: (jobs) =>
      worker.call<JobResult[]>(
        { kind: 'classify', images: jobs },
        jobs.map((j) => j.bytes.buffer as ArrayBuffer),
      ),
    onBatch: (size) => metrics.batchSize.observe(size),
  });
  const metrics = createMetrics(() => batcher.queued + worker.inFlight);
  const answer = { model: card.architecture, model_info: card.model_info };

  /** Every error answer: JSON {error, code}, counted, with Retry-After on a 503. */
  const refuse = (error: Error & { statusCode?: number; code?: string }, reply: FastifyReply) => {
    const { status, code, message } = describeError(error, settings);
    metrics.errors.inc({ code });
    if (status === 503) reply.header('retry-after', String(RETRY_AFTER_S));
    // The rest of a refused body would be read as the next request: close the connection instead.
    if (code === 'body-too-large') reply.header('connection', 'close');
    return reply.code(status).send({ error: message, code });
  };

  // A client that sends its request too slowly gets 408; Node checks for them every connectionsCheckingInterval.
  const app = Fastify({
    bodyLimit: settings.maxBody,
    requestTimeout: settings.timeoutMs,
    // Requests that come while closing get the usual JSON 503 from the first hook below.
    return503OnClosing: false,
    // A request without Host is refused by the first hook below, in JSON, rather than by Node with an empty 400.
    http: { connectionsCheckingInterval: Math.min(1000, settings.timeoutMs), requireHostHeader: false },
    frameworkErrors: (error, _request, reply) => refuse(error, reply),
    // What Node's HTTP parser refuses (a malformed request, headers too large, a request too slow) never reaches a
    // route: it is answered on the socket, in the same JSON shape.
    clientErrorHandler: (error: NodeJS.ErrnoException & { reason?: string }, socket: Socket) => {
      const response = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage;
      if (error.code === 'ECONNRESET' || socket.destroyed) return;
      if (socket.writable && !response?.headersSent) {
        const { status, code, message } = clientError(error, settings.timeoutMs);
        metrics.errors.inc({ code });
        const body = JSON.stringify({ error: message, code });
        socket.write(
          `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      }
      socket.destroy(error);
    },
  });
  app.server.headersTimeout = settings.timeoutMs;
  // Node answers an Expect other than 100-continue itself, with an empty 417, unless asked to here.
  app.server.on('checkExpectation', (request: IncomingMessage, response: ServerResponse) => {
    const body = JSON.stringify({ error: `Expect: ${request.headers.expect} is not supported; send the request without it`, code: 'expectation-failed' });
    metrics.errors.inc({ code: 'expectation-failed' });
    response.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' }).end(body);
  });
  // Before any route is added: each route keeps the error handler set when it was added.
  app.setErrorHandler(async (error: Error & { statusCode?: number; code?: string }, _request, reply) => refuse(error, reply));
  app.removeAllContentTypeParsers();
  await app.register(multipart, {
    preservePath: true,
    limits: { fileSize: settings.maxBody, files: settings.maxParts, fields: MAX_FIELDS, parts: settings.maxParts + MAX_FIELDS },
  });
  app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: settings.maxBody }, (_request, body, done) => done(null, body));

  let closing: Promise<void> | null = null;
  // Before CORS's own hook, so that a malformed preflight is refused in JSON too.
  app.addHook('onRequest', async (request) => {
    if (closing) throw new ServeError('the server is shutting down; retry once it is back', 'unavailable', 503);
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) throw badRequest('an HTTP/1.1 request needs a Host header');
    const declared = Number(request.headers['content-length']);
    if (declared > settings.maxBody) throw tooLarge(settings.maxBody);
    const encoding = request.headers['content-encoding']?.trim().toLowerCase();
    if (encoding && encoding !== 'identity') {
      throw new ServeError(
        `hemato does not decompress request bodies (Content-Encoding: ${encoding}): send the image's bytes as they are, without Content-Encoding`,
        'unsupported-media-type',
        415,
      );
    }
    if (options.cors && request.method === 'OPTIONS' && !(request.headers.origin && request.headers['access-control-request-method']))
      throw badRequest('OPTIONS is answered as a CORS preflight only: send Origin and Access-Control-Request-Method');
  });
  if (options.cors) await app.register(cors, { origin: options.cors, methods: ['GET', 'POST'], allowedHeaders: ['authorization', 'content-type'] });

  const token = options.token ? createHash('sha256').update(options.token).digest() : null;
  app.addHook('onRequest', async (request, reply) => {
    // By the route matched, not the raw URL: '/%761/model' is routed to '/v1/model' too.
    const route = request.routeOptions.url ?? '';
    if (!token || request.method === 'OPTIONS' || !(route.startsWith('/v1/') || route === '/metrics')) return;
    // The scheme is case-insensitive (RFC 7235); the token is not.
    const given = /^bearer +(.+)$/i.exec(request.headers.authorization ?? '')?.[1];
    if (!given || !timingSafeEqual(createHash('sha256').update(given).digest(), token)) {
      reply.header('www-authenticate', 'Bearer');
      throw new ServeError('this server needs its token: send the header Authorization: Bearer TOKEN', 'unauthorized', 401);
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.requests.inc({ route, status: reply.statusCode });
    metrics.latency.observe({ route }, reply.elapsedTime / 1000);
  });
  // Once closing, each answer closes its connection: a kept-alive one would hold the shutdown for its idle time-out.
  app.addHook('onSend', async (_request, reply) => {
    if (closing) reply.header('connection', 'close');
  });
  // A path that exists with other methods is 405 with the methods it takes; any other is 404.
  app.setNotFoundHandler(async (request, reply) => {
    const where = request.url.split('?')[0];
    const allowed = ['GET', 'HEAD', 'POST', 'OPTIONS'].filter((method) => method !== request.method && app.findRoute({ method, url: where }));
    if (allowed.some((method) => method !== 'OPTIONS')) {
      reply.header('allow', allowed.join(', '));
      return refuse(new ServeError(`${where} does not take ${request.method}; it takes ${allowed.join(', ')}`, 'method-not-allowed', 405), reply);
    }
    return refuse(new ServeError(`no route ${request.method} ${where}`, 'not-found', 404), reply);
  });

  /** Waits for `work` within the time-out, then answers 503 `timeout`; `withdraw` takes back what still waits. */
  const inTime = async <T>(work: Promise<T>, what: string, withdraw = () => {}): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        withdraw();
        reject(new ServeError(`${what} within ${settings.timeoutMs / 1000} s (--timeout); the server is overloaded, retry later`, 'timeout', 503));
      }, settings.timeoutMs);
    });
    try {
      return await Promise.race([work, deadline]);
    } finally {
      clearTimeout(timer);
    }
  };

  /** Queues images and waits for their answers, within the time-out; images still waiting then are withdrawn. */
  const classify = (jobs: ImageJob[]): Promise<JobResult[]> =>
    inTime(Promise.all(batcher.submit(jobs)), 'the images were not classified', () => batcher.withdraw(jobs));

  const parseQuery = (query: unknown): ClassifyQuery => {
    const q = checkQuery(query, ['top_k', 'pixel_size', 'tta', 'name']);
    if (q.pixel_size !== undefined && byField)
      throw badRequest('this server was started with --field, which turns scale normalisation off: pixel_size cannot apply');
    return {
      topK: q.top_k === undefined ? 3 : integerIn(q.top_k, 'top_k', 1, classes.length),
      job: {
        ...(q.pixel_size !== undefined ? { pixelSize: numberIn(q.pixel_size, 'pixel_size', 0.01, 10) } : {}),
        ...(q.tta !== undefined ? { tta: flag(q.tta, 'tta') } : {}),
      },
      name: q.name === undefined ? undefined : fileName(q.name),
    };
  };

  const shown = (result: JobResult, topK: number, name: string | undefined) => {
    const named = name === undefined ? {} : { file: name };
    if ('error' in result) return { ...named, ...result };
    return { ...named, ...result, predictions: result.predictions.slice(0, topK) };
  };

  app.post('/v1/classify', async (request, reply) => {
    const query = parseQuery(request.query);
    const [upload] = await readImages(request, 1, settings.maxBody);
    const name = query.name ?? upload.name;
    // Of the bytes received, as the review page keys its decisions and exports name images (hashed before the
    // bytes move to the worker thread).
    const sha256 = createHash('sha256').update(upload.bytes).digest('hex');
    const [result] = await classify([{ bytes: upload.bytes, ...query.job }]);
    if ('error' in result) {
      metrics.errors.inc({ code: result.code ?? 'failed' });
      return reply.code(statusOf(result.code)).send({ ...shown(result, query.topK, name), sha256 });
    }
    return { ...answer, sha256, result: shown(result, query.topK, name) };
  });

  app.post('/v1/classify/batch', async (request) => {
    const query = parseQuery(request.query);
    if (query.name !== undefined) throw badRequest("name applies to a single image; a batch takes each part's file name");
    const uploads = await readImages(request, settings.maxParts, settings.maxBody);
    const results = await classify(uploads.map((u) => ({ bytes: u.bytes, ...query.job })));
    for (const r of results) if ('error' in r) metrics.errors.inc({ code: r.code ?? 'failed' });
    return { ...answer, results: results.map((r, i) => shown(r, query.topK, uploads[i].name)) };
  });

  app.post('/v1/explain', async (request, reply) => {
    const q = checkQuery(request.query, ['label', 'format']);
    const format = q.format ?? 'png';
    if (format !== 'png' && format !== 'json') throw badRequest(`format must be png or json, got '${format}'`);
    if (q.label !== undefined && !classes.includes(q.label))
      throw badRequest(`label must be one of the model's classes (${classes.join(', ')}), got '${q.label}'`);
    const [upload] = await readImages(request, 1, settings.maxBody);
    if (worker.inFlight + batcher.queued >= settings.maxQueue) throw new ServeError('the server is busy; retry shortly', 'queue-full', 503);
    const job: ExplainJob = { bytes: upload.bytes, label: q.label, format, deadline: Date.now() + settings.timeoutMs };
    const result = await inTime(worker.call<ExplainResult>({ kind: 'explain', job }, [upload.bytes.buffer as ArrayBuffer]), 'the image was not explained');
    if (format === 'png')
      return reply
        .type('image/png')
        .header('x-hemato-label', result.label)
        .header('x-hemato-score', result.score.toFixed(6))
        .header('x-hemato-uncertain', String(result.uncertain))
        .header('x-hemato-reasons', result.reasons.join(', '))
        .send(Buffer.from(result.png!));
    const { label, score, uncertain, reasons, size, grid, stage, cam } = result;
    return { ...answer, label, score, uncertain, reasons, size, grid, stage, cam };
  });

  app.get('/v1/model', async () => ({ ...answer, card }));

  app.get('/v1/folder', async () => {
    if (!folder) throw new ServeError('this server was started without a folder (hemato serve FOLDER)', 'no-folder', 404);
    return folder.list();
  });

  app.get('/v1/folder/file', async (request, reply) => {
    if (!folder) throw new ServeError('this server was started without a folder (hemato serve FOLDER)', 'no-folder', 404);
    const q = checkQuery(request.query, ['path']);
    return reply.type('application/octet-stream').send(await folder.read(q.path));
  });

  app.get('/healthz', async (_request, reply) => {
    if (!worker.alive) return reply.code(503).send({ status: 'unavailable', code: 'unavailable' });
    return { status: 'ok', model: card.architecture };
  });

  app.get('/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));

  const page = pageFiles();
  app.get('/', async (_request, reply) => sendPage(reply, 'index.html'));
  app.get<{ Params: { name: string } }>('/page/:name', async (request, reply) => {
    if (!page.has(request.params.name)) throw new ServeError(`no page file '${request.params.name}'`, 'not-found', 404);
    return sendPage(reply, request.params.name);
  });
  function sendPage(reply: FastifyReply, name: string) {
    return reply
      .type(PAGE_TYPES[path.extname(name)] ?? 'application/octet-stream')
      .header('cache-control', 'no-cache')
      .header('content-security-policy', PAGE_POLICY)
      .send(readFileSync(path.join(PAGE_DIR, name)));
  }

  try {
    await app.listen({ host: settings.host, port: settings.port });
  } catch (error) {
    await worker.close();
    const { code, message } = error as NodeJS.ErrnoException;
    const why =
      code === 'EADDRINUSE'
        ? 'another program is listening on that port; choose another --port (0 takes any free one)'
        : code === 'EADDRNOTAVAIL'
          ? 'no network interface of this machine has that address; give one of its addresses as --host'
          : code === 'EACCES'
            ? 'ports below 1024 need privileges; choose a port from 1024 on'
            : message;
    throw new Error(`cannot listen on ${settings.host}:${settings.port}: ${why}`);
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : settings.port;
  const host = isIP(settings.host) === 6 ? `[${settings.host}]` : settings.host;
  return {
    url: `http://${host}:${port}`,
    app,
    identity: card.model_info,
    close: () =>
      (closing ??= (async () => {
        await app.close();
        await batcher.drain();
        await worker.close();
      })()),
  };
}

/** Files of the page folder, listed once: only these names are served. */
function pageFiles(): Set<string> {
  try {
    return new Set(readdirSync(PAGE_DIR).filter((name) => PAGE_TYPES[path.extname(name)] !== undefined));
  } catch {
    return new Set();
  }
}

interface Upload {
  bytes: Uint8Array;
  name?: string;
}

/**
 * The images of a request: its raw body, or the file parts of a multipart body (at most `maxParts`). Each image is
 * copied into its own buffer, so that it can be handed to the worker thread.
 */
async function readImages(request: FastifyRequest, maxParts: number, maxBody: number): Promise<Upload[]> {
  if (!request.isMultipart()) {
    const body = request.body;
    if (!Buffer.isBuffer(body) || body.length === 0)
      throw new ServeError('send the image as the request body, or as a multipart/form-data file part', 'empty', 400);
    if (maxParts > 1) throw new ServeError('a batch is a multipart/form-data request with one file part per image', 'bad-request', 400);
    return [{ bytes: new Uint8Array(body) }];
  }
  const uploads: Upload[] = [];
  let total = 0;
  for await (const part of request.parts()) {
    if (part.type !== 'file') continue;
    if (uploads.length === maxParts) {
      throw new ServeError(
        maxParts === 1 ? 'this route takes one image; send several to /v1/classify/batch' : `a batch holds at most ${maxParts} images (--max-parts)`,
        'too-many-parts',
        413,
      );
    }
    const bytes = new Uint8Array(await part.toBuffer());
    total += bytes.length;
    if (total > maxBody) throw tooLarge(maxBody);
    uploads.push({ bytes, ...(part.filename ? { name: fileName(part.filename) } : {}) });
  }
  if (uploads.length === 0) throw new ServeError('the multipart body holds no file part', 'empty', 400);
  return uploads;
}

const tooLarge = (maxBody: number) =>
  new ServeError(`the request body is over the limit of ${sizeText(maxBody)} (--max-body); send a smaller image, or fewer at once`, 'body-too-large', 413);
const badRequest = (message: string) => new ServeError(message, 'bad-request', 400);

/** What Node's HTTP parser refused, before any route saw the request. */
function clientError(error: NodeJS.ErrnoException & { reason?: string }, timeoutMs: number): { status: number; code: string; message: string } {
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT')
    return { status: 408, code: 'request-timeout', message: `the request was not received within ${timeoutMs / 1000} s (--timeout); send it whole, faster` };
  if (error.code === 'HPE_HEADER_OVERFLOW')
    return {
      status: 431,
      code: 'headers-too-large',
      message: `the request line and headers are over ${sizeText(maxHeaderSize)}; shorten the URL or the headers`,
    };
  return { status: 400, code: 'bad-request', message: `the request is not well-formed HTTP/1.1 (${error.reason ?? error.code ?? error.message})` };
}

/** Fastify's, multipart's and our own errors as a status, a stable code and a message that says what to do. */
function describeError(
  error: Error & { statusCode?: number; code?: string },
  settings: { maxBody: number; maxParts: number },
): { status: number; code: string; message: string } {
  if (error instanceof ServeError) return { status: error.status, code: error.code, message: error.message };
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
    case 'FST_REQ_FILE_TOO_LARGE':
      return { status: 413, code: 'body-too-large', message: tooLarge(settings.maxBody).message };
    case 'FST_FILES_LIMIT':
    case 'FST_PARTS_LIMIT':
      return { status: 413, code: 'too-many-parts', message: `a batch holds at most ${settings.maxParts} images (--max-parts)` };
    case 'FST_FIELDS_LIMIT':
      return {
        status: 413,
        code: 'too-many-parts',
        message: `a multipart body holds at most ${MAX_FIELDS} text fields besides its images; send the images as file parts and options in the query string`,
      };
    case 'FST_ERR_BAD_URL':
      return { status: 400, code: 'bad-request', message: `the URL's path is not valid percent-encoding: ${error.message}` };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_BODY':
      return { status: 400, code: 'empty', message: 'the request body is empty: send an image' };
    case 'FST_INVALID_MULTIPART_CONTENT_TYPE':
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { status: 415, code: 'unsupported-media-type', message: 'send the image as the raw body or as multipart/form-data' };
  }
  const status = error.statusCode ?? 500;
  if (status >= 400 && status < 500) return { status, code: 'bad-request', message: error.message };
  // A multipart body that ends early (a dropped upload) surfaces as a stream error without a status.
  if (/unexpected end|part terminated|malformed|boundary/i.test(error.message))
    return { status: 400, code: 'bad-request', message: `the multipart body is malformed or cut short: ${error.message}` };
  return { status: 500, code: 'failed', message: error.message };
}

function checkQuery(query: unknown, names: string[]): Record<string, string | undefined> {
  const q = (query ?? {}) as Record<string, unknown>;
  for (const [key, value] of Object.entries(q)) {
    if (!names.includes(key)) throw badRequest(`unknown query parameter '${key}'; this route takes ${names.join(', ')}`);
    if (typeof value !== 'string') throw badRequest(`give the query parameter '${key}' once`);
  }
  return q as Record<string, string | undefined>;
}

// Plain decimals only: Number() would also read '0x3', '1e1', ' 1' and ''.
function integerIn(value: string, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw badRequest(`${name} must be an integer in ${min}..${max}, got '${value}'`);
  return n;
}

function numberIn(value: string, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !(n >= min && n <= max)) throw badRequest(`${name} must be a decimal number from ${min} to ${max}, got '${value}'`);
  return n;
}

function flag(value: string, name: string): boolean {
  if (value === 'true' || value === '1') return true;
  if (value === 'false' || value === '0') return false;
  throw badRequest(`${name} must be true or false, got '${value}'`);
}

/** A file name as a client gives it: echoed in answers, never used as a path, so it must be a plain base name. */
function fileName(name: string): string {
  if (name === '' || name === '.' || name === '..' || /[/\\\x00-\x1f\x7f]/.test(name) || Buffer.byteLength(name) > 255) {
    throw new ServeError(
      `'${name.slice(0, 80).replace(/[\x00-\x1f\x7f]/g, '?')}' is not a plain file name (no folders, no control characters, at most 255 bytes)`,
      'bad-file-name',
      400,
    );
  }
  return name;
}

function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function checkSettings(s: Limits): void {
  for (const [key, [min, max]] of Object.entries(SERVE_RANGES) as [keyof typeof SERVE_RANGES, readonly [number, number]][]) {
    const value = s[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max)
      throw new RangeError(`${key} must be an integer in ${min}..${max}, got ${String(value)}`);
  }
  if (s.maxQueue < s.maxParts) throw new RangeError(`maxQueue (${s.maxQueue}) must hold at least one full batch request (maxParts ${s.maxParts})`);
}
