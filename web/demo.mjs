// The demo page: G LeNets trained at once on MNIST through the modelbatch npm package,
// each with its own learning rate (a log-spaced sweep). Everything runs in this page;
// MNIST comes from the server's .gz files, decompressed with DecompressionStream.
//
// URL parameters set the initial controls: ?models=8&lrMin=0.001&lrMax=0.1&batch=64
// &optimizer=sgd&test=10000 (test images per evaluation) &autostart=1.
// window.demoState exposes the run for tests.
import init, { Trainer, webgpuHint } from './pkg/modelbatch.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  status: 'loading',
  errors: [],
  adapter: null,
  models: 0,
  step: 0,
  lr: [],
  history: [], // per model: [{step, loss}]
  firstLoss: [],
  lastLoss: [],
  evals: [], // {step, top1: number[]}
  bestTop1: 0,
  dead: [],
};
window.demoState = state;

// ---- controls ---------------------------------------------------------------------------

const fmtLr = (x) => (x >= 0.01 ? x.toPrecision(2) : x.toExponential(1));
function readControls() {
  const a = 10 ** Number($('lr-min').value);
  const b = 10 ** Number($('lr-max').value);
  return {
    models: Number($('models').value),
    lrMin: Math.min(a, b),
    lrMax: Math.max(a, b),
    batch: Number($('batch').value),
    optimizer: $('optimizer').value,
  };
}
function showControls() {
  const c = readControls();
  $('models-out').textContent = c.models;
  $('lr-min-out').textContent = fmtLr(10 ** Number($('lr-min').value));
  $('lr-max-out').textContent = fmtLr(10 ** Number($('lr-max').value));
}
function applyParams() {
  const set = (id, v) => { if (v !== null && v !== '') $(id).value = v; };
  set('models', params.get('models'));
  if (params.get('lrMin')) $('lr-min').value = Math.log10(Number(params.get('lrMin')));
  if (params.get('lrMax')) $('lr-max').value = Math.log10(Number(params.get('lrMax')));
  set('batch', params.get('batch'));
  set('optimizer', params.get('optimizer'));
  showControls();
}
for (const id of ['models', 'lr-min', 'lr-max']) $(id).addEventListener('input', showControls);

function setStatus(text, kind = '') {
  $('status').textContent = text;
  $('status').className = kind || 'muted';
}

function fail(where, e) {
  const msg = `${where}: ${e && e.message ? e.message : e}`;
  state.errors.push(msg);
  state.status = 'error';
  setStatus(msg, 'error');
  console.warn(msg);
}

// ---- MNIST ------------------------------------------------------------------------------

async function fetchIdx(name) {
  const res = await fetch(`data/mnist/${name}.gz`);
  if (!res.ok) throw new Error(`data/mnist/${name}.gz: HTTP ${res.status}`);
  const stream = res.body.pipeThrough(new DecompressionStream('gzip'));
  const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  const view = new DataView(bytes.buffer);
  const dims = bytes[3];
  const shape = Array.from({ length: dims }, (_, i) => view.getUint32(4 + 4 * i));
  return { shape, data: bytes.subarray(4 + 4 * dims) };
}

async function loadMnist(testCount) {
  const [ti, tl, vi, vl] = await Promise.all([
    fetchIdx('train-images-idx3-ubyte'), fetchIdx('train-labels-idx1-ubyte'),
    fetchIdx('t10k-images-idx3-ubyte'), fetchIdx('t10k-labels-idx1-ubyte'),
  ]);
  const n = Math.min(testCount, vi.shape[0]);
  return {
    train: { images: ti.data, labels: tl.data, shape: [ti.shape[0], 1, 28, 28], name: 'MNIST train' },
    test: { images: vi.data.subarray(0, n * 784), labels: vl.data.subarray(0, n), shape: [n, 1, 28, 28], name: 'MNIST test' },
  };
}

// ---- colours and charts -----------------------------------------------------------------

// Viridis, sampled: learning rate low (purple) to high (yellow).
const VIRIDIS = ['#440154', '#482878', '#3e4989', '#31688e', '#26828e', '#1f9e89', '#35b779', '#6ece58', '#b5de2b', '#fde725'];
function colour(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i].match(/\w\w/g).map((h) => parseInt(h, 16));
  const b = VIRIDIS[i + 1].match(/\w\w/g).map((h) => parseInt(h, 16));
  return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(',')})`;
}
function lrColour(m) {
  const lr = state.lr;
  const lo = Math.log(Math.min(...lr));
  const hi = Math.log(Math.max(...lr));
  return colour(hi > lo ? (Math.log(lr[m]) - lo) / (hi - lo) : 0.5);
}

function sizeCanvas(c) {
  const r = c.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(100, Math.round(r.width * dpr));
  const h = Math.max(100, Math.round(r.height * dpr));
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const ctx = c.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w: r.width, h: r.height };
}

function axes(ctx, w, h, pad, xTicks, yTicks, xLabel, yLabel) {
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = '#dde1e8';
  ctx.fillStyle = '#6b7385';
  ctx.font = '11px system-ui, sans-serif';
  ctx.lineWidth = 1;
  for (const [x, label] of xTicks) {
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
    ctx.textAlign = 'center'; ctx.fillText(label, x, h - pad.b + 14);
  }
  for (const [y, label] of yTicks) {
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.textAlign = 'right'; ctx.fillText(label, pad.l - 6, y + 4);
  }
  ctx.textAlign = 'center';
  ctx.fillText(xLabel, (pad.l + w - pad.r) / 2, h - 4);
  ctx.save(); ctx.translate(12, (pad.t + h - pad.b) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText(yLabel, 0, 0); ctx.restore();
}

function drawLoss() {
  const { ctx, w, h } = sizeCanvas($('loss-chart'));
  const pad = { l: 48, r: 12, t: 10, b: 34 };
  const maxStep = Math.max(10, state.step);
  const lo = Math.log10(0.01);
  const hi = Math.log10(5);
  const X = (s) => pad.l + (s / maxStep) * (w - pad.l - pad.r);
  const Y = (l) => pad.t + (1 - (Math.log10(Math.min(5, Math.max(0.01, l))) - lo) / (hi - lo)) * (h - pad.t - pad.b);
  const xt = [];
  const stepTick = 10 ** Math.floor(Math.log10(maxStep / 2)) * (maxStep / 10 ** Math.floor(Math.log10(maxStep)) > 5 ? 2 : 1);
  for (let s = 0; s <= maxStep; s += stepTick) xt.push([X(s), String(s)]);
  const yt = [0.01, 0.03, 0.1, 0.3, 1, 3].map((v) => [Y(v), String(v)]);
  axes(ctx, w, h, pad, xt, yt, 'step', 'loss (log)');
  ctx.lineWidth = 1.25;
  state.history.forEach((pts, m) => {
    if (pts.length === 0) return;
    ctx.strokeStyle = lrColour(m);
    ctx.globalAlpha = state.dead[m] ? 0.25 : 0.9;
    ctx.beginPath();
    let started = false;
    for (const p of pts) {
      if (!Number.isFinite(p.loss)) { started = false; continue; }
      if (!started) { ctx.moveTo(X(p.step), Y(p.loss)); started = true; } else ctx.lineTo(X(p.step), Y(p.loss));
    }
    ctx.stroke();
  });
  ctx.globalAlpha = 1;
}

function drawColourbar() {
  const c = $('colorbar');
  const ctx = c.getContext('2d');
  for (let x = 0; x < c.width; x++) { ctx.fillStyle = colour(x / (c.width - 1)); ctx.fillRect(x, 0, 1, c.height); }
  if (state.lr.length) {
    $('cb-min').textContent = `lr ${fmtLr(Math.min(...state.lr))}`;
    $('cb-max').textContent = fmtLr(Math.max(...state.lr));
  }
}

function drawAccuracy() {
  const { ctx, w, h } = sizeCanvas($('acc-chart'));
  const pad = { l: 48, r: 12, t: 10, b: 34 };
  if (!state.lr.length) { axes(ctx, w, h, pad, [], [], 'learning rate (log)', 'test top-1'); return; }
  const lo = Math.log10(Math.min(...state.lr)) - 0.1;
  const hi = Math.log10(Math.max(...state.lr)) + 0.1;
  const X = (lr) => pad.l + ((Math.log10(lr) - lo) / (hi - lo)) * (w - pad.l - pad.r);
  const Y = (a) => pad.t + (1 - a) * (h - pad.t - pad.b);
  // Ticks at 1, 2 and 5 times powers of ten (only the powers when the range is wide).
  const xt = [];
  const mantissas = hi - lo > 2.5 ? [1] : [1, 2, 5];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of mantissas) {
      const v = m * 10 ** e;
      if (Math.log10(v) >= lo && Math.log10(v) <= hi) xt.push([X(v), fmtLr(v)]);
    }
  }
  const yt = [0, 0.2, 0.4, 0.6, 0.8, 1].map((a) => [Y(a), `${Math.round(a * 100)}%`]);
  axes(ctx, w, h, pad, xt, yt, 'learning rate (log)', 'test top-1');
  const last = state.evals.at(-1);
  if (!last) return;
  const order = state.lr.map((lr, m) => m).sort((a, b) => state.lr[a] - state.lr[b]);
  ctx.strokeStyle = '#b8bfcc';
  ctx.beginPath();
  order.forEach((m, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, X(state.lr[m]), Y(last.top1[m])));
  ctx.stroke();
  const best = last.top1.indexOf(Math.max(...last.top1));
  for (const m of order) {
    ctx.fillStyle = lrColour(m);
    ctx.beginPath(); ctx.arc(X(state.lr[m]), Y(last.top1[m]), m === best ? 6 : 4, 0, 2 * Math.PI); ctx.fill();
    if (m === best) { ctx.strokeStyle = '#1d2330'; ctx.lineWidth = 1.5; ctx.stroke(); }
  }
  ctx.fillStyle = '#1d2330';
  ctx.textAlign = 'left';
  ctx.fillText(`best: lr ${fmtLr(state.lr[best])}, ${(100 * last.top1[best]).toFixed(1)}%`, pad.l + 6, pad.t + 14);
  if (last.ensemble !== null) {
    // The ensemble: a dashed line across the sweep.
    ctx.save();
    ctx.strokeStyle = '#c0392b';
    ctx.setLineDash([6, 4]);
    ctx.beginPath(); ctx.moveTo(pad.l, Y(last.ensemble)); ctx.lineTo(w - pad.r, Y(last.ensemble)); ctx.stroke();
    ctx.restore();
    ctx.fillStyle = '#c0392b';
    ctx.textAlign = 'right';
    ctx.fillText(`ensemble of all: ${(100 * last.ensemble).toFixed(1)}%`, w - pad.r - 4, Y(last.ensemble) - 5);
  }
}

let drawQueued = false;
function redraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; drawLoss(); drawAccuracy(); });
}
window.addEventListener('resize', redraw);

// ---- training ---------------------------------------------------------------------------

let data = null;
let trainer = null;
let running = false;
let loop = null;
const testCount = Number(params.get('test') ?? 10000);
const speed = { t: 0, steps: 0, window: [] };
let evalCost = 0; // ms the last evaluation took
let lastEvalAt = 0;

async function createTrainer() {
  if (trainer) { trainer.free(); trainer = null; }
  const c = readControls();
  const opts = {
    model: 'lenet',
    models: c.models,
    optimizer: c.optimizer,
    lr: c.models === 1 ? c.lrMin : { logSpace: [c.lrMin, c.lrMax] },
    batchSize: c.batch,
    seed: 0,
  };
  if (c.optimizer === 'sgd') opts.momentum = 0.9;
  setStatus(`Compiling ${c.models} LeNets…`);
  trainer = await Trainer.create(opts);
  await trainer.setDataset(data.train);
  Object.assign(state, {
    models: c.models, batch: c.batch, step: 0, lr: Array.from(trainer.learningRates()),
    history: Array.from({ length: c.models }, () => []), firstLoss: [], lastLoss: [], evals: [], bestTop1: 0,
    dead: new Array(c.models).fill(0),
  });
  const info = trainer.adapterInfo();
  $('adapter').textContent = `Adapter: ${info.name || state.adapter} (${info.backend}, ${info.deviceType})`;
  speed.window = [];
  evalCost = 0;
  lastEvalAt = performance.now();
  $('stat-step').textContent = '0'; $('stat-epoch').textContent = '0.00'; $('stat-best').textContent = '–';
  $('stat-ensemble').textContent = '–';
  $('stat-samples').textContent = '–'; $('stat-steps').textContent = '–'; $('stat-dead').textContent = '0';
  drawColourbar();
  redraw();
}

async function evaluate() {
  const t0 = performance.now();
  const ev = await trainer.evaluate(state.evals.length === 0 ? data.test : undefined);
  const top1 = Array.from(ev.top1);
  // The models as one classifier: their probabilities averaged per image.
  const ens = state.dead.some((d) => !d) ? await trainer.evaluateEnsemble(data.test) : null;
  evalCost = performance.now() - t0;
  lastEvalAt = performance.now();
  state.evals.push({ step: state.step, top1, ensemble: ens ? ens.top1 : null });
  $('stat-ensemble').textContent = ens ? `${(100 * ens.top1).toFixed(1)}% (${ens.members.length} models)` : '–';
  state.bestTop1 = Math.max(...top1);
  $('stat-best').textContent = `${(100 * state.bestTop1).toFixed(1)}% (model ${top1.indexOf(state.bestTop1)})`;
  $('eval-note').textContent = `(${ev.samples} test images, step ${state.step})`;
  redraw();
  predictSoon();
}

async function trainLoop() {
  let k = 1; // steps per call, adapted so that a call takes about 200 ms
  while (running) {
    const t0 = performance.now();
    await trainer.step(k);
    const dt = performance.now() - t0;
    const m = trainer.metrics();
    for (let s = 0; s < m.steps; s++) {
      const row = m.loss.subarray(s * m.models, (s + 1) * m.models);
      if (state.firstLoss.length === 0) state.firstLoss = Array.from(row);
      state.lastLoss = Array.from(row);
    }
    // One point per call per model: the mean loss of its steps.
    for (let g = 0; g < m.models; g++) {
      let sum = 0;
      for (let s = 0; s < m.steps; s++) sum += m.loss[s * m.models + g];
      const h = state.history[g];
      h.push({ step: m.firstStep + m.steps, loss: sum / m.steps });
      if (h.length > 1500) state.history[g] = h.filter((_, i) => i % 2 === 0 || i === h.length - 1);
    }
    state.step = trainer.stepCount;
    state.dead = Array.from(trainer.diverged());
    speed.window.push({ t: performance.now(), steps: m.steps, dt });
    while (speed.window.length > 1 && speed.window[0].t < performance.now() - 5000) speed.window.shift();
    const steps = speed.window.reduce((a, w) => a + w.steps, 0);
    const busy = speed.window.reduce((a, w) => a + w.dt, 0) / 1000;
    $('stat-step').textContent = String(state.step);
    $('stat-epoch').textContent = (state.step * state.batch / 60000).toFixed(2);
    $('stat-steps').textContent = (steps / busy).toFixed(1);
    $('stat-samples').textContent = Math.round(steps * state.models * state.batch / busy).toLocaleString('en');
    $('stat-dead').textContent = String(state.dead.reduce((a, b) => a + b, 0));
    setStatus(`Training: ${k} step${k > 1 ? 's' : ''} per call`);
    redraw();
    k = Math.max(1, Math.min(50, Math.round(k * 200 / Math.max(dt, 1))));
    // Evaluate at most 20% of the time, and at least every 15 s.
    const since = performance.now() - lastEvalAt;
    if (running && (state.evals.length === 0 ? state.step >= 20 : since > Math.min(15000, Math.max(2000, 4 * evalCost)))) {
      setStatus('Evaluating…');
      await evaluate();
    }
  }
}

function setButtons() {
  $('start').disabled = running || !data || !!trainer;
  $('pause').disabled = !trainer;
  $('pause').textContent = running ? 'Pause' : 'Resume';
  $('reset').disabled = !data;
}

async function start() {
  try {
    if (!trainer) await createTrainer();
    running = true;
    state.status = 'training';
    setButtons();
    loop = trainLoop().catch((e) => { running = false; fail('training', e); setButtons(); });
  } catch (e) {
    fail('starting', e);
  }
}

async function pause() {
  if (running) {
    running = false;
    await loop;
    // Paused once the last evaluation is in (the charts and the best model then match the weights).
    setStatus('Evaluating…');
    try { await evaluate(); } catch (e) { fail('evaluating', e); }
    state.status = 'paused';
    setStatus(`Paused at step ${state.step}`);
  } else if (trainer) {
    return start();
  }
  setButtons();
}

async function reset() {
  running = false;
  await loop;
  try {
    await createTrainer();
    state.status = 'ready';
    setStatus('Ready: press Start');
  } catch (e) { fail('reset', e); }
  setButtons();
}

$('start').addEventListener('click', start);
$('pause').addEventListener('click', pause);
$('reset').addEventListener('click', reset);

// ---- drawing pad ------------------------------------------------------------------------

const pad = $('pad');
const pctx = pad.getContext('2d');
let drawing = false;
let inked = false;
function clearPad() {
  pctx.fillStyle = '#000';
  pctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  $('small').getContext('2d').clearRect(0, 0, 28, 28);
  for (const id of ['best-bars', 'ens-bars']) bars($(id), null);
  $('best-digit').textContent = '–';
  $('ens-digit').textContent = '–';
}
function stroke(e, begin) {
  const r = pad.getBoundingClientRect();
  const x = (e.clientX - r.left) * (pad.width / r.width);
  const y = (e.clientY - r.top) * (pad.height / r.height);
  pctx.strokeStyle = '#fff';
  pctx.lineWidth = 20;
  pctx.lineCap = 'round';
  pctx.lineJoin = 'round';
  if (begin) { pctx.beginPath(); pctx.moveTo(x, y); }
  pctx.lineTo(x, y);
  pctx.stroke();
  inked = true;
}
pad.addEventListener('pointerdown', (e) => { drawing = true; pad.setPointerCapture(e.pointerId); stroke(e, true); });
pad.addEventListener('pointermove', (e) => { if (drawing) { stroke(e, false); predictSoon(); } });
pad.addEventListener('pointerup', () => { drawing = false; predictSoon(); });
$('clear').addEventListener('click', clearPad);

// MNIST-style: the ink's bounding box scaled into 20x20, centred by its centre of mass in 28x28.
function downsample() {
  const img = pctx.getImageData(0, 0, pad.width, pad.height).data;
  let x0 = pad.width, y0 = pad.height, x1 = -1, y1 = -1;
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (img[4 * (y * pad.width + x)] > 20) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    }
  }
  if (x1 < 0) return null;
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const s = 20 / Math.max(bw, bh);
  const tmp = document.createElement('canvas');
  tmp.width = 28; tmp.height = 28;
  const t = tmp.getContext('2d');
  t.fillStyle = '#000'; t.fillRect(0, 0, 28, 28);
  t.imageSmoothingQuality = 'high';
  t.drawImage(pad, x0, y0, bw, bh, 14 - (bw * s) / 2, 14 - (bh * s) / 2, bw * s, bh * s);
  let px = t.getImageData(0, 0, 28, 28).data;
  let mass = 0, cx = 0, cy = 0;
  for (let i = 0; i < 784; i++) { const v = px[4 * i]; mass += v; cx += v * (i % 28); cy += v * Math.floor(i / 28); }
  const dx = Math.round(13.5 - cx / mass), dy = Math.round(13.5 - cy / mass);
  const out = new Uint8Array(784);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const sx = x - dx, sy = y - dy;
      out[y * 28 + x] = sx >= 0 && sx < 28 && sy >= 0 && sy < 28 ? px[4 * (sy * 28 + sx)] : 0;
    }
  }
  const small = $('small').getContext('2d');
  const id = small.createImageData(28, 28);
  out.forEach((v, i) => { id.data[4 * i] = id.data[4 * i + 1] = id.data[4 * i + 2] = v; id.data[4 * i + 3] = 255; });
  small.putImageData(id, 0, 0);
  return out;
}

function bars(el, probs) {
  el.innerHTML = '';
  for (let c = 0; c < 10; c++) {
    const p = probs ? probs[c] : 0;
    const label = document.createElement('span'); label.textContent = c;
    const bar = document.createElement('div'); bar.className = 'bar';
    const fill = document.createElement('div'); fill.style.width = `${(100 * p).toFixed(1)}%`; bar.append(fill);
    const num = document.createElement('span'); num.className = 'num'; num.textContent = probs ? `${(100 * p).toFixed(1)}%` : '';
    el.append(label, bar, num);
  }
}

let predicting = false;
let predictAgain = false;
async function predictSoon() {
  if (!trainer || !inked) return;
  if (predicting) { predictAgain = true; return; }
  predicting = true;
  state.predicting = true;
  try {
    do {
      predictAgain = false;
      const image = downsample();
      if (!image) break;
      const p = await trainer.predict(image);
      const last = state.evals.at(-1);
      // The best model: highest test accuracy, or before any evaluation the lowest recent loss.
      let best = 0;
      if (last) best = last.top1.indexOf(Math.max(...last.top1));
      else if (state.lastLoss.length) best = state.lastLoss.indexOf(Math.min(...state.lastLoss.map((l) => (Number.isFinite(l) ? l : Infinity))));
      const probs = p.probs.subarray(best * p.classes, (best + 1) * p.classes);
      bars($('best-bars'), probs);
      $('best-digit').textContent = p.predicted[best];
      $('best-label').textContent = `(model ${best}, lr ${fmtLr(state.lr[best])})`;
      bars($('ens-bars'), p.ensemble.probs);
      $('ens-digit').textContent = `${p.ensemble.predicted} (${p.ensemble.votes[p.ensemble.predicted]} of ${p.ensemble.models} models vote for it)`;
    } while (predictAgain);
  } catch (e) {
    fail('predicting', e);
  } finally {
    predicting = false;
    state.predicting = false;
  }
}

// ---- start-up ---------------------------------------------------------------------------

async function main() {
  applyParams();
  clearPad();
  drawColourbar();
  redraw();
  if (!('gpu' in navigator) || !navigator.gpu) {
    $('no-webgpu').hidden = false;
    $('no-webgpu-text').textContent = 'This browser does not provide navigator.gpu. Any of these does:';
    $('adapter').textContent = 'No WebGPU in this browser.';
    setStatus('WebGPU is needed to train.', 'error');
    state.status = 'no-webgpu';
    return;
  }
  await init();
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) throw new Error(webgpuHint());
    const info = adapter.info || {};
    state.adapter = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ') || 'unknown adapter';
    $('adapter').textContent = `Adapter: ${state.adapter}`;
  } catch (e) {
    $('no-webgpu').hidden = false;
    $('no-webgpu-text').textContent = `No WebGPU adapter: ${e.message}`;
    state.status = 'no-webgpu';
    return;
  }
  try {
    const t0 = performance.now();
    data = await loadMnist(testCount);
    setStatus(`MNIST loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s: press Start`);
    state.status = 'ready';
  } catch (e) {
    fail('loading MNIST', e);
    return;
  }
  setButtons();
  if (params.get('autostart') === '1') await start();
}

main().catch((e) => fail('start-up', e));
