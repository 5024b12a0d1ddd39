// The review page of `hemato serve`: load cell images (dropped, chosen or from the served folder), classify them
// through the server, review the labels with the keyboard, and export the decisions. Decisions are kept in
// IndexedDB by the SHA-256 of each image, so they survive a reload and follow an image dropped again.
// Plain ES module; it talks to nothing but the server that serves it.

const CONCURRENCY = 4;
const WAITING_SHOWN = 48;
const PROGRESS_INTERVAL_MS = 250;
const TOKEN_KEY = 'hemato-token';
const FOLDER_KEY = 'hemato-folder-open';
const DB_NAME = 'hemato-review';
const STORE = 'decisions';
const IMAGE_NAME = /\.(jpe?g|png|tiff?|webp|bmp)$/i;
const REASONS = {
  'low-confidence': 'low confidence',
  'out-of-distribution': 'unlike the training images',
  'no-single-cell': 'no single cell',
  'scale-out-of-range': 'scale out of range',
  'decode-warning': 'decode warning',
};
const SCALE_SOURCES = {
  'red-cells': 'from the red cells',
  'white-cell': 'from the white cell',
  appearance: "from the cell's appearance",
  given: 'pixel size as given',
  none: 'not measured',
};

const $ = (id) => document.getElementById(id);

const state = {
  model: null, // the /v1/model answer
  classes: [],
  cells: [], // in arrival order
  byId: new Map(),
  byContent: new Map(), // `${sha256} ${name}` -> the classified cell showing that image under that name
  nextId: 1,
  decisions: new Map(), // sha256 -> decision
  persistent: true,
  undo: [], // { sha256, before, cellId }
  selected: null, // cell id
  order: [], // cells in gallery order, rebuilt by render()
  queue: [],
  active: 0,
  progress: { total: 0, done: 0, failed: 0, skipped: 0 },
  folder: null, // { name, files } when the server serves one
  folderOpen: false,
  cams: new Map(), // `${sha256}|${label}` -> Promise<string | null>
};

// ---------------------------------------------------------------------------------------------------------------
// Talking to the server: the access token, 401s and a full queue.

let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let tokenPrompt = null;
let tokenRefused = false;

function askToken() {
  if (tokenPrompt) return tokenPrompt;
  const dialog = $('token-dialog');
  tokenPrompt = new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const value = $('token-input').value.trim();
        tokenPrompt = null;
        if (dialog.returnValue === 'ok' && value) {
          token = value;
          sessionStorage.setItem(TOKEN_KEY, value);
          resolve(true);
        } else {
          tokenRefused = true;
          setModelLine('This server needs an access token. Reload the page to enter it.');
          resolve(false);
        }
      },
      { once: true },
    );
    $('token-input').value = '';
    dialog.returnValue = '';
    dialog.showModal();
  });
  return tokenPrompt;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** fetch() with the bearer token; asks for a token on a 401 and waits out a 503 as its Retry-After says. */
async function api(url, init = {}) {
  let unauthorized = 0;
  let busy = 0;
  for (;;) {
    const sent = token;
    const headers = new Headers(init.headers);
    if (sent) headers.set('Authorization', `Bearer ${sent}`);
    const res = await fetch(url, { ...init, headers });
    if (res.status === 401 && !tokenRefused && unauthorized++ < 3) {
      if (token === sent && !(await askToken())) return res;
      continue;
    }
    if (res.status === 503 && busy++ < 120) {
      const seconds = Number(res.headers.get('Retry-After'));
      await sleep(Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 30) * 1000 : 1000);
      continue;
    }
    return res;
  }
}

async function failure(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    if (body?.error) message = body.code ? `${body.error} (${body.code})` : String(body.error);
  } catch {
    // not JSON: keep the status line
  }
  return new Error(message);
}

// ---------------------------------------------------------------------------------------------------------------
// Decisions in IndexedDB, keyed by the image's SHA-256.

let dbPromise = null;

function openDb() {
  dbPromise ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: 'sha256' });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return dbPromise;
}

async function loadDecisions() {
  try {
    const db = await openDb();
    const all = await new Promise((resolve, reject) => {
      const request = db.transaction(STORE).objectStore(STORE).getAll();
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    for (const decision of all) state.decisions.set(decision.sha256, decision);
  } catch {
    state.persistent = false;
    setExportStatus('Decisions cannot be kept in this browser (IndexedDB is unavailable); export before leaving.');
  }
}

async function storeDecision(sha, decision) {
  if (!state.persistent) return;
  try {
    const db = await openDb();
    await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, 'readwrite');
      if (decision) tx.objectStore(STORE).put(decision);
      else tx.objectStore(STORE).delete(sha);
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
    });
  } catch {
    setExportStatus('A decision could not be saved in this browser; export before leaving.');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cells: adding images, the classification queue and its progress.

/** items: [{ source: 'drop' | 'folder', path, blob? }]; path is what exports name the file by. */
function addImages(items) {
  if (state.active === 0 && state.queue.length === 0) state.progress = { total: 0, done: 0, failed: 0, skipped: 0 };
  for (const item of items) {
    const cell = {
      id: state.nextId++,
      source: item.source,
      path: item.path,
      name: item.path.split('/').pop(),
      blob: item.blob ?? null,
      url: null,
      sha256: null,
      status: 'queued',
      error: null,
      result: null,
      modelInfo: null,
      predicted: null,
      el: null,
    };
    state.cells.push(cell);
    state.byId.set(cell.id, cell);
    state.queue.push(cell);
    state.progress.total++;
  }
  pump();
  scheduleRender();
}

function pump() {
  while (state.active < CONCURRENCY && state.queue.length > 0) {
    const cell = state.queue.shift();
    state.active++;
    classify(cell).finally(() => {
      state.active--;
      pump();
      scheduleRender(PROGRESS_INTERVAL_MS);
    });
  }
}

const alive = (cell) => state.byId.get(cell.id) === cell;
const contentKey = (cell) => `${cell.sha256} ${cell.name}`;

async function classify(cell) {
  cell.status = 'working';
  try {
    await ready;
    if (!cell.blob) {
      const res = await api(`/v1/folder/file?path=${encodeURIComponent(cell.path)}`);
      if (!res.ok) throw await failure(res);
      cell.blob = await res.blob();
    }
    if (!alive(cell)) return;
    cell.url = URL.createObjectURL(cell.blob);
    const topK = Math.max(8, state.classes.length);
    // No ?name=: the page keys cells by their own path, and the server would refuse names it cannot echo (a
    // backslash, a newline) that a folder may still hold.
    const res = await api(`/v1/classify?top_k=${topK}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: cell.blob,
    });
    if (!res.ok) throw await failure(res);
    const body = await res.json();
    if (!alive(cell)) return;
    // The server hashes what it received: decisions are keyed by it.
    cell.sha256 = body.sha256;
    if (state.byContent.has(contentKey(cell))) {
      state.progress.skipped++;
      removeCell(cell); // the same image under the same name is already in the gallery
      return;
    }
    state.byContent.set(contentKey(cell), cell);
    cell.result = body.result;
    cell.modelInfo = body.model_info ?? state.model?.model_info ?? null;
    cell.predicted = body.result.predictions[0]?.label ?? null;
    if (!cell.predicted) throw new Error('the server returned no prediction');
    cell.status = 'done';
    state.progress.done++;
  } catch (error) {
    if (!alive(cell)) return;
    cell.status = 'error';
    cell.error = error instanceof Error ? error.message : String(error);
    state.progress.failed++;
  } finally {
    if (alive(cell)) cell.dirty = true;
  }
}

function removeCell(cell) {
  state.byId.delete(cell.id);
  if (cell.sha256 && state.byContent.get(contentKey(cell)) === cell) state.byContent.delete(contentKey(cell));
  state.cells = state.cells.filter((c) => c !== cell);
  if (cell.url) URL.revokeObjectURL(cell.url);
  if (state.selected === cell.id) state.selected = null;
  cell.el?.remove();
}

function clearGallery() {
  state.queue = [];
  for (const cell of state.cells) if (cell.url) URL.revokeObjectURL(cell.url);
  state.cells = [];
  state.byId.clear();
  state.byContent.clear();
  state.undo = [];
  state.selected = null;
  state.progress = { total: 0, done: 0, failed: 0, skipped: 0 };
  state.folderOpen = false;
  sessionStorage.removeItem(FOLDER_KEY);
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------------------------
// Decisions.

const decisionOf = (cell) => (cell.sha256 ? state.decisions.get(cell.sha256) : undefined);
const finalOf = (cell) => decisionOf(cell)?.final ?? cell.predicted;
const topScore = (cell) => cell.result?.predictions[0]?.score ?? 0;

function decide(cell, label) {
  if (!cell || cell.status !== 'done') return;
  const before = state.decisions.get(cell.sha256);
  const info = cell.modelInfo ?? state.model?.model_info ?? {};
  const decision = {
    sha256: cell.sha256,
    file: cell.path,
    predicted: cell.predicted,
    final: label,
    decided_at: new Date().toISOString(),
    model: { name: info.name ?? '', sha256: info.sha256 ?? '' },
  };
  state.decisions.set(cell.sha256, decision);
  state.undo.push({ sha256: cell.sha256, before, cellId: cell.id });
  storeDecision(cell.sha256, decision);
  markSha(cell.sha256);
  announce(label === cell.predicted ? `${cell.name}: ${label} confirmed` : `${cell.name}: changed to ${label}`);
  const index = state.order.indexOf(cell);
  const next = state.order.slice(index + 1).find((c) => c.status === 'done');
  if (next) select(next.id);
  scheduleRender();
}

function undo() {
  const last = state.undo.pop();
  if (!last) {
    announce('Nothing to undo');
    return;
  }
  if (last.before) state.decisions.set(last.sha256, last.before);
  else state.decisions.delete(last.sha256);
  storeDecision(last.sha256, last.before);
  markSha(last.sha256);
  if (state.byId.has(last.cellId)) select(last.cellId);
  announce('Decision undone');
  scheduleRender();
}

function markSha(sha) {
  for (const cell of state.cells) if (cell.sha256 === sha) cell.dirty = true;
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering: the gallery, the differential, the progress and the detail pane.

let renderQueued = false;
let renderDelay = null;

/**
 * Renders on the next frame, or with `delay` (ms) no sooner than that: finished images are shown a few times a
 * second, each time in one layout, while what the reviewer does shows on the next frame.
 */
function scheduleRender(delay = 0) {
  if (renderQueued) return;
  if (delay > 0) {
    renderDelay ??= setTimeout(() => scheduleRender(), delay);
    return;
  }
  clearTimeout(renderDelay);
  renderDelay = null;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function galleryOrder() {
  const groups = state.classes.map((label) => ({ key: label, title: label, cells: [] }));
  const byLabel = new Map(groups.map((g) => [g.key, g]));
  const waiting = { key: 'waiting', title: 'Classifying', cells: [] };
  const failed = { key: 'failed', title: 'Could not classify', cells: [] };
  for (const cell of state.cells) {
    if (cell.status === 'done') {
      let group = byLabel.get(cell.predicted);
      if (!group) {
        group = { key: cell.predicted, title: cell.predicted, cells: [] };
        byLabel.set(cell.predicted, group);
        groups.push(group);
      }
      group.cells.push(cell);
    } else if (cell.status === 'error') failed.cells.push(cell);
    else waiting.cells.push(cell);
  }
  // Only the next few waiting images get tiles: a folder of thousands would otherwise lay out thousands of
  // placeholders on every frame. The heading counts them all.
  waiting.total = waiting.cells.length;
  waiting.cells = waiting.cells.slice(0, WAITING_SHOWN);
  for (const group of groups) {
    group.cells.sort((a, b) => Number(b.result.uncertain) - Number(a.result.uncertain) || topScore(a) - topScore(b) || a.id - b.id);
  }
  return [...groups, failed, waiting].filter((g) => g.cells.length > 0);
}

// The gallery is reconciled, not rebuilt: each frame moves only the tiles whose place changed, so a folder of
// thousands of images costs per finished image what a handful does, not a relayout of every tile.
const groupViews = new Map(); // group key -> { section, head, tiles }
let selectedEl = null;

function render() {
  const groups = galleryOrder();
  state.order = groups.flatMap((g) => g.cells);
  const gallery = $('gallery');
  const sections = groups.map((group) => {
    const view = groupView(group);
    const uncertain = group.cells.filter((c) => c.result?.uncertain).length;
    const title = `${group.title} · ${group.total ?? group.cells.length}${uncertain ? ` (${uncertain} uncertain)` : ''}`;
    if (view.head.textContent !== title) view.head.textContent = title;
    for (const cell of group.cells) if (!cell.el || cell.dirty) updateTile(cell);
    arrange(
      view.tiles,
      group.cells.map((cell) => cell.el),
    );
    return view.section;
  });
  arrange(gallery, sections);
  for (const [key, view] of groupViews) if (!view.section.isConnected) groupViews.delete(key);
  if (state.selected !== null && !state.byId.has(state.selected)) state.selected = null;
  const selected = state.selected !== null ? state.byId.get(state.selected).el : null;
  if (selectedEl !== selected) selectedEl?.setAttribute('aria-selected', 'false');
  selected?.setAttribute('aria-selected', 'true');
  selectedEl = selected;
  gallery.setAttribute('aria-activedescendant', state.selected !== null ? `cell-${state.selected}` : '');
  $('empty-note').hidden = state.cells.length > 0;
  renderProgress();
  renderDifferential();
  renderDetail();
}

function groupView(group) {
  let view = groupViews.get(group.key);
  if (!view) {
    const section = document.createElement('div');
    section.className = `group group-${group.key}`;
    section.setAttribute('role', 'group');
    const head = document.createElement('div');
    head.className = 'group-head';
    head.id = `group-${group.key}`;
    section.setAttribute('aria-labelledby', head.id);
    const tiles = document.createElement('div');
    tiles.className = 'tiles';
    section.append(head, tiles);
    view = { section, head, tiles };
    groupViews.set(group.key, view);
  }
  return view;
}

/** Makes `parent`'s children exactly `nodes`, in order, moving only those out of place. */
function arrange(parent, nodes) {
  const wanted = new Set(nodes);
  let next = parent.firstChild;
  for (const node of nodes) {
    while (next && !wanted.has(next)) {
      const after = next.nextSibling;
      next.remove();
      next = after;
    }
    if (node === next) next = next.nextSibling;
    else parent.insertBefore(node, next);
  }
  while (next) {
    const after = next.nextSibling;
    next.remove();
    next = after;
  }
}

function updateTile(cell) {
  cell.dirty = false;
  if (!cell.el) {
    const el = document.createElement('div');
    el.id = `cell-${cell.id}`;
    el.setAttribute('role', 'option');
    el.setAttribute('aria-selected', 'false');
    el.addEventListener('click', () => {
      select(cell.id);
      $('gallery').focus({ preventScroll: true });
    });
    cell.el = el;
  }
  const el = cell.el;
  const decision = decisionOf(cell);
  const final = finalOf(cell);
  const changed = Boolean(decision) && final !== cell.predicted;
  el.className = ['tile', `is-${cell.status}`, cell.result?.uncertain ? 'is-uncertain' : '', decision ? 'is-reviewed' : '', changed ? 'is-changed' : '']
    .filter(Boolean)
    .join(' ');
  el.dataset.file = cell.path;
  el.dataset.predicted = cell.predicted ?? '';
  el.dataset.final = final ?? '';
  el.dataset.reviewed = String(Boolean(decision));

  const parts = [];
  const thumb = document.createElement('div');
  thumb.className = 'thumb';
  if (cell.url) {
    const img = document.createElement('img');
    img.alt = '';
    img.decoding = 'async';
    img.loading = 'lazy';
    img.src = cell.url;
    img.addEventListener(
      'error',
      () => img.replaceWith(Object.assign(document.createElement('span'), { className: 'no-preview', textContent: 'no preview' })),
      { once: true },
    );
    thumb.append(img);
  }
  parts.push(thumb);
  const meta = document.createElement('div');
  meta.className = 'tile-meta';
  let label;
  if (cell.status === 'done') {
    const pct = `${Math.round(topScore(cell) * 100)}\u202f%`;
    meta.append(span('conf', pct));
    if (decision) meta.append(span('mark', changed ? `→ ${final}` : '✓'));
    label = `${cell.name}: ${cell.predicted} ${pct}`;
    if (cell.result.uncertain) {
      const reasons = cell.result.reasons.map(reasonText);
      const list = document.createElement('ul');
      list.className = 'reasons';
      for (const reason of reasons.length ? reasons : ['uncertain']) list.append(Object.assign(document.createElement('li'), { textContent: reason }));
      parts.push(meta, list);
      label += `, uncertain: ${reasons.join(', ') || 'yes'}`;
    } else parts.push(meta);
    label += decision ? (changed ? `, changed to ${final}` : ', confirmed') : ', not reviewed';
  } else if (cell.status === 'error') {
    meta.append(span('error', cell.error ?? 'failed'));
    parts.push(meta);
    label = `${cell.name}: could not classify: ${cell.error}`;
  } else {
    meta.append(span('waiting', 'classifying…'));
    parts.push(meta);
    label = `${cell.name}: classifying`;
  }
  el.setAttribute('aria-label', label);
  el.title = cell.path;
  el.replaceChildren(...parts);
}

function span(className, text) {
  const s = document.createElement('span');
  s.className = className;
  s.textContent = text;
  return s;
}

const reasonText = (reason) => REASONS[reason] ?? reason;

function renderProgress() {
  const { total, done, failed, skipped } = state.progress;
  const finished = done + failed + skipped;
  const bar = $('progress-bar');
  bar.max = Math.max(total, 1);
  bar.value = finished;
  let text;
  if (total === 0) text = state.cells.length ? '' : 'No images yet.';
  else if (finished < total) text = `Classifying: ${finished} of ${total}`;
  else text = `Classified ${done} of ${total}`;
  if (failed) text += ` · ${failed} could not be classified`;
  if (skipped) text += ` · ${skipped} already here`;
  $('progress-text').textContent = text;
  $('progress-text').dataset.busy = String(finished < total);
}

function renderDifferential() {
  const counts = new Map(state.classes.map((label) => [label, 0]));
  let classified = 0;
  let reviewed = 0;
  let changed = 0;
  for (const cell of state.cells) {
    if (cell.status !== 'done') continue;
    classified++;
    const final = finalOf(cell);
    counts.set(final, (counts.get(final) ?? 0) + 1);
    const decision = decisionOf(cell);
    if (decision) {
      reviewed++;
      if (decision.final !== cell.predicted) changed++;
    }
  }
  const body = $('differential').tBodies[0];
  const rows = [...counts].map(([label, count], i) => {
    const row = document.createElement('tr');
    row.dataset.label = label;
    const key = document.createElement('td');
    if (i < 9) key.append(Object.assign(document.createElement('kbd'), { textContent: String(i + 1) }));
    const name = document.createElement('th');
    name.scope = 'row';
    name.textContent = label;
    const n = Object.assign(document.createElement('td'), { className: 'num count', textContent: String(count) });
    const pct = Object.assign(document.createElement('td'), { className: 'num pct', textContent: classified ? ((100 * count) / classified).toFixed(1) : '–' });
    row.append(key, name, n, pct);
    return row;
  });
  body.replaceChildren(...rows);
  $('total-count').textContent = String(classified);
  $('classified-count').textContent = String(classified);
  $('reviewed-count').textContent = String(reviewed);
  $('changed-count').textContent = String(changed);
}

let shownDetail = '';

function renderDetail() {
  const cell = state.selected !== null ? state.byId.get(state.selected) : undefined;
  $('detail-empty').hidden = Boolean(cell);
  $('detail-body').hidden = !cell;
  if (!cell) {
    shownDetail = '';
    return;
  }
  const decision = decisionOf(cell);
  const final = finalOf(cell);
  const key = `${cell.id}|${cell.status}|${final}|${decision?.decided_at ?? ''}`;
  if (key === shownDetail) return;
  shownDetail = key;
  $('detail-heading').textContent = cell.name;
  $('detail-file').textContent = cell.path !== cell.name ? cell.path : '';
  const image = $('detail-image');
  image.hidden = !cell.url;
  if (cell.url) {
    image.src = cell.url;
    image.alt = `${cell.name}`;
  }
  $('detail-sha').textContent = cell.sha256 ?? '';
  $('detail-sha').title = cell.sha256 ?? '';
  const bars = $('detail-bars');
  if (cell.status !== 'done') {
    $('detail-predicted').textContent = cell.status === 'error' ? `could not classify: ${cell.error}` : 'classifying…';
    $('detail-final').textContent = '–';
    $('detail-flags').textContent = '–';
    $('detail-scale').textContent = '–';
    bars.replaceChildren();
    showCam(cell, null);
    return;
  }
  const result = cell.result;
  $('detail-predicted').textContent = `${cell.predicted} · ${percent(topScore(cell))}`;
  $('detail-final').textContent = decision
    ? `${final} · ${final === cell.predicted ? 'confirmed' : 'changed'} ${new Date(decision.decided_at).toLocaleString()}`
    : `${final} · not reviewed`;
  $('detail-flags').textContent = result.uncertain ? `uncertain: ${result.reasons.map(reasonText).join(', ') || 'yes'}` : 'none';
  $('detail-scale').textContent = [scaleText(result.scale), ...(result.stain === 'raised' ? ['pale stain raised (second look)'] : [])].join(' · ');
  bars.replaceChildren(
    ...result.predictions.map((p) => {
      const item = document.createElement('li');
      item.className = p.label === final ? 'is-final' : '';
      const bar = document.createElement('span');
      bar.className = 'bar';
      bar.setAttribute('aria-hidden', 'true');
      const fill = document.createElement('span');
      fill.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
      bar.append(fill);
      item.append(span('bar-label', p.label), bar, span('bar-value', percent(p.score)));
      return item;
    }),
  );
  showCam(cell, final);
}

const percent = (score) => `${(score * 100).toFixed(1)}\u202f%`;

function scaleText(scale) {
  if (!scale) return '–';
  const parts = [SCALE_SOURCES[scale.source] ?? scale.source];
  if (typeof scale.um_per_px === 'number') parts.push(`${scale.um_per_px.toFixed(3)} µm/px`);
  if (typeof scale.factor === 'number') parts.push(`resized ×${scale.factor.toFixed(2)}`);
  return parts.join(' · ');
}

// The class-activation map for the selected cell's final label, fetched once the selection settles and cached.
let camTimer = 0;

function showCam(cell, label) {
  const img = $('detail-cam');
  const note = $('detail-cam-note');
  clearTimeout(camTimer);
  img.hidden = true;
  $('detail-cam-caption').textContent = label ? `Class activation: ${label}` : 'Class activation';
  if (!label || !cell.sha256) {
    note.textContent = 'No explanation available';
    note.hidden = false;
    return;
  }
  const key = `${cell.sha256}|${label}`;
  note.textContent = 'Loading the explanation…';
  note.hidden = false;
  const show = (url) => {
    if (state.selected !== cell.id || finalOf(cell) !== label) return;
    if (url) {
      img.src = url;
      img.alt = `Class-activation map of ${cell.name} for ${label}`;
      img.hidden = false;
      note.hidden = true;
    } else note.textContent = 'No explanation available';
  };
  if (state.cams.has(key)) {
    state.cams.get(key).then(show);
    return;
  }
  camTimer = setTimeout(() => {
    const request = api(`/v1/explain?label=${encodeURIComponent(label)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: cell.blob,
    })
      .then(async (res) => (res.ok ? URL.createObjectURL(await res.blob()) : null))
      .catch(() => {
        state.cams.delete(key); // the connection failed: ask again next time the cell is shown
        return null;
      });
    state.cams.set(key, request);
    request.then(show);
  }, 150);
}

// ---------------------------------------------------------------------------------------------------------------
// Selection and keys.

function select(id) {
  state.selected = id;
  const cell = state.byId.get(id);
  scheduleRender();
  if (cell?.el) requestAnimationFrame(() => cell.el.scrollIntoView({ block: 'nearest', inline: 'nearest' }));
}

function move(key) {
  const order = state.order;
  if (order.length === 0) return;
  const index = order.findIndex((c) => c.id === state.selected);
  if (index < 0) return select(order[0].id);
  if (key === 'Home') return select(order[0].id);
  if (key === 'End') return select(order[order.length - 1].id);
  if (key === 'ArrowLeft') return select(order[Math.max(0, index - 1)].id);
  if (key === 'ArrowRight') return select(order[Math.min(order.length - 1, index + 1)].id);
  // Up and down: the nearest tile in the row above or below, across groups.
  const here = order[index].el.getBoundingClientRect();
  const down = key === 'ArrowDown';
  let best = null;
  let bestRow = Infinity;
  let bestX = Infinity;
  for (const cell of order) {
    const r = cell.el.getBoundingClientRect();
    const dy = down ? r.top - here.top : here.top - r.top;
    if (dy < here.height / 2) continue;
    const dx = Math.abs(r.left - here.left);
    if (dy < bestRow - 1 || (Math.abs(dy - bestRow) <= 1 && dx < bestX)) {
      best = cell;
      bestRow = dy;
      bestX = dx;
    }
  }
  if (best) select(best.id);
}

function onKey(event) {
  if (event.defaultPrevented || document.querySelector('dialog[open]')) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement || target?.isContentEditable) return;
  const onControl = target instanceof HTMLButtonElement || target instanceof HTMLAnchorElement || target?.tagName === 'SUMMARY';
  const cell = state.selected !== null ? state.byId.get(state.selected) : undefined;
  const key = event.key;
  if (key === '?' && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    openHelp();
    return;
  }
  if ((key === 'z' || key === 'Z') && !event.altKey && !event.metaKey && !event.shiftKey) {
    event.preventDefault();
    undo();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(key)) {
    const label = state.classes[Number(key) - 1];
    if (!label) return;
    event.preventDefault();
    if (cell?.status === 'done') decide(cell, label);
    return;
  }
  if (onControl) return;
  if (['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'Home', 'End'].includes(key)) {
    event.preventDefault();
    if (target === document.body || target === document.documentElement) $('gallery').focus({ preventScroll: true });
    move(key);
    return;
  }
  if ((key === 'Enter' || key === ' ') && cell?.status === 'done') {
    event.preventDefault();
    decide(cell, finalOf(cell));
  }
}

function openHelp() {
  const dialog = $('help');
  if (!dialog.open) dialog.showModal();
}

function announce(text) {
  $('announcer').textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Loading images: drops (files and folders), the file input and the served folder.

function fromFiles(files) {
  return Array.from(files, (file) => ({ source: 'drop', path: file.webkitRelativePath || file.name, blob: file }));
}

async function fromDrop(dataTransfer) {
  const items = [];
  const folders = [];
  const entries = dataTransfer.items ? Array.from(dataTransfer.items) : [];
  for (const item of entries) {
    if (item.kind !== 'file') continue;
    const entry = item.webkitGetAsEntry?.();
    if (entry?.isDirectory) folders.push(entry);
    else {
      const file = item.getAsFile();
      if (file) items.push({ source: 'drop', path: file.name, blob: file });
    }
  }
  // Added one by one: push(...list) overflows the stack for a folder of 120,000 images or more.
  if (entries.length === 0) for (const item of fromFiles(dataTransfer.files)) items.push(item);
  for (const folder of folders) for (const item of await walkEntry(folder)) items.push(item);
  return items;
}

async function walkEntry(dir) {
  const found = [];
  const reader = dir.createReader();
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (batch.length === 0) break;
    for (const entry of batch) {
      if (entry.name.startsWith('.')) continue;
      if (entry.isDirectory) for (const inner of await walkEntry(entry)) found.push(inner);
      else if (IMAGE_NAME.test(entry.name)) {
        const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
        found.push({ source: 'drop', path: entry.fullPath.replace(/^\//, ''), blob: file });
      }
    }
  }
  return found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

function setupDrop() {
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types ?? []).includes('Files');
  window.addEventListener('dragenter', (event) => {
    if (!hasFiles(event)) return;
    depth++;
    document.body.classList.add('is-dragging');
  });
  window.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove('is-dragging');
  });
  window.addEventListener('dragover', (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'copy';
  });
  window.addEventListener('drop', async (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove('is-dragging');
    if (!event.dataTransfer) return;
    const items = await fromDrop(event.dataTransfer);
    if (items.length) loaded(items);
  });
  $('file-input').addEventListener('change', (event) => {
    const input = event.target;
    if (input.files?.length) loaded(fromFiles(input.files));
    input.value = '';
  });
}

function loaded(items) {
  const first = state.cells.length === 0;
  addImages(items);
  if (first) $('gallery').focus({ preventScroll: true });
}

async function openFolder() {
  const button = $('folder-button');
  button.disabled = true;
  try {
    const res = await api('/v1/folder');
    if (!res.ok) throw await failure(res);
    state.folder = await res.json();
    clearGallery();
    state.folderOpen = true;
    sessionStorage.setItem(FOLDER_KEY, '1');
    showFolder();
    loaded(state.folder.files.filter((file) => IMAGE_NAME.test(file.path)).map((file) => ({ source: 'folder', path: file.path })));
  } catch (error) {
    $('folder-note').textContent = `The folder could not be listed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

function showFolder() {
  const { name, files } = state.folder;
  const images = files.filter((file) => IMAGE_NAME.test(file.path)).length;
  const others = files.length - images;
  $('folder-box').hidden = false;
  $('folder-note').textContent =
    `${name}: ${images} image${images === 1 ? '' : 's'}${others ? ` (${others} other file${others === 1 ? '' : 's'} passed over)` : ''}; exports name them by their paths in it.`;
}

// ---------------------------------------------------------------------------------------------------------------
// Export.

function exportRows() {
  return state.cells
    .filter((cell) => cell.status === 'done')
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : a.id - b.id))
    .map((cell) => {
      const decision = decisionOf(cell);
      const final = finalOf(cell);
      const info = cell.modelInfo ?? state.model?.model_info ?? {};
      return {
        file: cell.path,
        sha256: cell.sha256,
        predicted: cell.predicted,
        final,
        changed: final !== cell.predicted,
        reviewed: Boolean(decision),
        confidence: Number(topScore(cell).toFixed(6)),
        uncertain: Boolean(cell.result.uncertain),
        reasons: cell.result.reasons,
        model: info.name ?? '',
        model_sha256: info.sha256 ?? '',
        decided_at: decision?.decided_at ?? null,
      };
    });
}

const csvField = (value) => {
  const text = String(value ?? '');
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
};
const toCsv = (rows) => rows.map((row) => row.map(csvField).join(',')).join('\n') + '\n';

function exportCsv() {
  const rows = exportRows();
  if (!rows.length) return setExportStatus('Nothing to export yet.');
  const header = ['file', 'sha256', 'predicted', 'final', 'changed', 'reviewed', 'confidence', 'uncertain', 'reasons', 'model', 'model_sha256', 'decided_at'];
  const body = rows.map((r) => [
    r.file,
    r.sha256,
    r.predicted,
    r.final,
    r.changed,
    r.reviewed,
    r.confidence,
    r.uncertain,
    r.reasons.join(';'),
    r.model,
    r.model_sha256,
    r.decided_at ?? '',
  ]);
  download(`${baseName()}-review.csv`, toCsv([header, ...body]), 'text/csv');
  setExportStatus(`Exported ${rows.length} cell${rows.length === 1 ? '' : 's'} as CSV.`);
}

function exportJson() {
  const rows = exportRows();
  if (!rows.length) return setExportStatus('Nothing to export yet.');
  const document_ = {
    exported_at: new Date().toISOString(),
    folder: state.folderOpen ? (state.folder?.name ?? null) : null,
    model_info: state.model?.model_info ?? null,
    cells: rows,
  };
  download(`${baseName()}-review.json`, JSON.stringify(document_, null, 2) + '\n', 'application/json');
  setExportStatus(`Exported ${rows.length} cell${rows.length === 1 ? '' : 's'} as JSON.`);
}

function exportLabels() {
  const rows = exportRows().filter((r) => r.reviewed);
  if (!rows.length) return setExportStatus('No reviewed cells yet: confirm or reclassify cells first.');
  download(`${baseName()}-labels.csv`, toCsv([['file', 'label'], ...rows.map((r) => [r.file, r.final])]), 'text/csv');
  setExportStatus(`Exported the labels of ${rows.length} reviewed cell${rows.length === 1 ? '' : 's'}.`);
}

const baseName = () => ((state.folderOpen && state.folder?.name) || 'hemato').replace(/[^\w.-]+/g, '_');

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function setExportStatus(text) {
  $('export-status').textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Start.

function setModelLine(text) {
  $('model-line').textContent = text;
}

async function loadModel() {
  const res = await api('/v1/model');
  if (!res.ok) throw await failure(res);
  state.model = await res.json();
  state.classes = [...(state.model.card?.classes ?? [])];
  const info = state.model.model_info ?? {};
  const parts = [info.name ?? state.model.model];
  if (info.sha256) parts.push(`sha256 ${info.sha256.slice(0, 12)}`);
  if (info.hemato_version) parts.push(`hemato ${info.hemato_version}`);
  setModelLine(`Model ${parts.join(' · ')}`);
  $('model-line').title = info.sha256 ?? '';
  $('help-classes').replaceChildren(
    ...state.classes.map((label, i) => {
      const li = document.createElement('li');
      li.append(Object.assign(document.createElement('kbd'), { textContent: String(i + 1) }), ` ${label}`);
      return li;
    }),
  );
  const digits = $('help-digits').querySelector('th');
  digits.replaceChildren(
    Object.assign(document.createElement('kbd'), { textContent: '1' }),
    '–',
    Object.assign(document.createElement('kbd'), { textContent: String(Math.min(9, state.classes.length)) }),
  );
}

async function checkFolder() {
  const res = await api('/v1/folder');
  if (!res.ok) return; // 404 no-folder: images come from drops only
  state.folder = await res.json();
  showFolder();
  if (sessionStorage.getItem(FOLDER_KEY) === '1') openFolder();
}

const ready = (async () => {
  await loadDecisions();
  try {
    await loadModel();
  } catch (error) {
    setModelLine(`The model could not be read: ${error.message}`);
    throw error;
  }
})();

setupDrop();
document.addEventListener('keydown', onKey);
$('help-button').addEventListener('click', openHelp);
$('folder-button').addEventListener('click', openFolder);
$('clear-button').addEventListener('click', clearGallery);
$('export-csv').addEventListener('click', exportCsv);
$('export-json').addEventListener('click', exportJson);
$('export-labels').addEventListener('click', exportLabels);
ready
  .then(() => {
    scheduleRender();
    return checkFolder();
  })
  .catch(() => {});
