// The npm package in Node: installs the packed tarball into a fresh temporary project with
// the npm package `webgpu` (Dawn; Vulkan through VK_ICD_FILENAMES, e.g. Chromium's
// SwiftShader), trains 4 models for 20 steps on the first 2048 MNIST images, and compares every step's
// loss, the test accuracy and the exported safetensors with the native engine
// (examples/web_reference.rs) run on the same data. Also: clear errors, predictions, weight
// export/import, and a lost device that is reported and recovered from.
//
//   node --test web/test/node.test.mjs
//
// Environment: MODELBATCH_TARBALL (default: the newest target/npm/modelbatch-*.tgz, built by
// `scripts/build-wasm --pack`), MODELBATCH_WEB_TEST_MODEL (default "lenet"; a JSON spec
// also works), VK_ICD_FILENAMES (default Chromium's SwiftShader ICD when present).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';

import { repoRoot } from './mnist.mjs';

const run = promisify(execFile);

// Dawn runs on Chromium's SwiftShader unless told otherwise (it rejects old Mesa drivers).
if (!process.env.VK_ICD_FILENAMES && existsSync('/usr/lib/chromium/vk_swiftshader_icd.json')) {
  process.env.VK_ICD_FILENAMES = '/usr/lib/chromium/vk_swiftshader_icd.json';
}

const config = {
  model: process.env.MODELBATCH_WEB_TEST_MODEL ?? 'lenet',
  models: 4,
  steps: 20,
  batch: 32,
  optimizer: 'adam',
  lrMin: 0.001,
  lrMax: 0.003,
  momentum: 0.9, // sgd only
  seed: 0,
  train: 2048,
  test: 500,
};

function tarball() {
  if (process.env.MODELBATCH_TARBALL) return process.env.MODELBATCH_TARBALL;
  const dir = join(repoRoot, 'target', 'npm');
  const found = existsSync(dir)
    ? readdirSync(dir).filter((f) => /^modelbatch-.*\.tgz$/.test(f)).map((f) => join(dir, f))
    : [];
  if (found.length === 0) throw new Error('no target/npm/modelbatch-*.tgz: run scripts/build-wasm --pack first');
  return found.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
}

function webgpuVersion() {
  const lock = JSON.parse(readFileSync(join(repoRoot, 'web', 'package-lock.json'), 'utf8'));
  return lock.packages['node_modules/webgpu'].version;
}

// The script run inside the temporary project: everything through the installed package.
const script = (mnistUrl) => `
import { Trainer, adapterInfo, installNavigatorGpu, tune, version } from 'modelbatch';
import { create, globals } from 'webgpu';
import { writeFileSync } from 'node:fs';
import { mnist } from ${JSON.stringify(mnistUrl)};

Object.assign(globalThis, globals);
installNavigatorGpu(create([]));
const cfg = JSON.parse(process.argv[2]);
const outDir = process.argv[3];
const out = { version: version(), errors: {} };
const expectReject = async (name, f) => {
  try { await f(); out.errors[name] = null; } catch (e) { out.errors[name] = String(e && e.message); }
};
const options = {
  model: cfg.model.startsWith('{') ? JSON.parse(cfg.model) : cfg.model,
  models: cfg.models,
  optimizer: cfg.optimizer,
  lr: { logSpace: [cfg.lrMin, cfg.lrMax] },
  ...(cfg.optimizer === 'sgd' ? { momentum: cfg.momentum } : {}),
  batchSize: cfg.batch,
  seed: cfg.seed,
};
out.adapter = await adapterInfo();
const trainer = await Trainer.create(options);
out.learningRates = Array.from(trainer.learningRates());
const train = mnist('train', cfg.train);
const test = mnist('t10k', cfg.test);
await trainer.setDataset(train);
const t0 = performance.now();
const last = await trainer.step(cfg.steps);
out.trainSeconds = (performance.now() - t0) / 1000;
const m = trainer.metrics();
out.metricsShape = [m.firstStep, m.steps, m.models, m.loss.length, m.correct.length];
out.loss = [];
for (let s = 0; s < m.steps; s++) out.loss.push(Array.from(m.loss.subarray(s * m.models, (s + 1) * m.models)));
out.last = Array.from(last);
out.stepCount = trainer.stepCount;
const ev = await trainer.evaluate(test);
out.top1 = Array.from(ev.top1);
out.top5 = Array.from(ev.top5);
out.testLoss = Array.from(ev.loss);
out.samples = ev.samples;
const again = await trainer.evaluate();
out.evaluateAgain = Array.from(again.top1);
const ens = await trainer.evaluateEnsemble(test);
const ens1 = await trainer.evaluateEnsemble(test, [2]);
out.ensemble = { all: { samples: ens.samples, members: Array.from(ens.members), top1: ens.top1, top5: ens.top5, loss: ens.loss },
  one: { members: Array.from(ens1.members), top1: ens1.top1, top5: ens1.top5, loss: ens1.loss } };
await expectReject('badMember', () => trainer.evaluateEnsemble(test, [0, 9]));
const image = test.images.subarray(0, 28 * 28);
const p = await trainer.predict(image);
out.predict = { classes: p.classes, probs: Array.from(p.probs), predicted: Array.from(p.predicted),
  ensemble: { probs: Array.from(p.ensemble.probs), predicted: p.ensemble.predicted,
    votes: Array.from(p.ensemble.votes), models: p.ensemble.models } };
const bytes = await trainer.exportModel(0);
writeFileSync(outDir + '/wasm-model-0.safetensors', bytes);
await trainer.importModel(1, bytes);
const p2 = await trainer.predict(image);
out.importedProbs = [Array.from(p2.probs.subarray(0, p2.classes)), Array.from(p2.probs.subarray(p2.classes, 2 * p2.classes))];
const all = await trainer.exportModels();
await trainer.importModels(all);

await expectReject('badSpec', () => Trainer.create({ ...options, model: { input: [1, 28, 28], layers: [{ type: 'conv3d' }] } }));
await expectReject('badJson', () => Trainer.create({ ...options, model: '{"input": [1, 28' }));
await expectReject('unknownOption', () => Trainer.create({ ...options, learningRate: 0.1 }));
await expectReject('lrLength', () => Trainer.create({ ...options, lr: [0.1, 0.2, 0.3] }));
await expectReject('badOptimizer', () => Trainer.create({ ...options, optimizer: 'lbfgs' }));
await expectReject('badShape', () => trainer.setDataset({ images: new Uint8Array(10), labels: new Uint8Array(1), shape: [1, 1, 28, 28] }));
await expectReject('wrongInput', () => trainer.setDataset({ images: new Uint8Array(2 * 100), labels: new Uint8Array(2), shape: [2, 1, 10, 10] }));
await expectReject('badLabel', () => trainer.setDataset({ images: new Uint8Array(784), labels: new Uint8Array([10]), shape: [1, 1, 28, 28] }));
await expectReject('badImage', () => trainer.predict(new Uint8Array(5)));
await expectReject('badModelIndex', () => trainer.exportModel(99));
await expectReject('badImport', () => trainer.importModel(0, new Uint8Array([1, 2, 3])));
await expectReject('noDataset', async () => {
  const t = await Trainer.create({ ...options, models: 1, lr: 0.1 });
  try { await t.step(1); } finally { t.free(); }
});
// A lost device: reported, every later call rejects, and a new trainer works.
trainer.destroy();
await expectReject('afterLoss', () => trainer.step(1));
await new Promise((r) => setTimeout(r, 200));
out.deviceLost = trainer.deviceLost ?? null;
const fresh = await Trainer.create(options);
await fresh.setDataset(train);
out.recreated = Array.from(await fresh.step(2));
// Population-based training: model 1 becomes a clone of model 0; model 2's lr changes and
// keeps its value over a new dataset.
await fresh.copyModel(1, 0);
const cloned = await fresh.predict(image);
out.pbt = {
  lr: [await fresh.hyper(0, 'lr'), await fresh.hyper(1, 'lr')],
  probs: [Array.from(cloned.probs.subarray(0, cloned.classes)), Array.from(cloned.probs.subarray(cloned.classes, 2 * cloned.classes))],
};
await fresh.setHyper(2, 'lr', 0.5);
out.pbt.lr2 = await fresh.hyper(2, 'lr');
out.pbt.rates = Array.from(fresh.learningRates());
await fresh.setDataset(train);
out.pbt.lr2After = await fresh.hyper(2, 'lr');
out.pbt.beta2 = await fresh.hyper(3, 'beta2');
await expectReject('badHyperName', () => fresh.setHyper(0, 'lr2', 0.1));
await expectReject('badHyperValue', () => fresh.setHyper(0, 'beta1', 1.5));
await expectReject('badCopy', () => fresh.copyModel(0, 99));
await expectReject('copyNoDataset', async () => {
  const t = await Trainer.create({ ...options, models: 2, lr: 0.1 });
  try { await t.copyModel(1, 0); } finally { t.free(); }
});
fresh.free();
// Other kernel shapes, those meant for GPUs included (per-position convolutions, several
// tensors per optimizer dispatch, the GEMMs' depth split over workgroup slices: generated
// WGSL that Tint must accept): the same training.
const tuned = await Trainer.create({ ...options, tuning: 'conv_ob=2,gemm_wg=4,gemm_split=16777216,conv_pixel=1,update_tensors=0,reduce_lanes=64' });
out.tunedInfo = tuned.adapterInfo().tuning;
await tuned.setDataset(train);
out.tuned = Array.from(await tuned.step(2));
tuned.free();
// The whole GPU set (tiled convolutions and weight gradient, the input gradient's products,
// two-pass sums) with every fold (folds=7: the tiles pool, the products compute pooled dy):
// Tint compiles the tiles' workgroup memory and barriers, and they train the same. (A
// smaller split_threads and gemm_groups, and no depth split, let this small batch take the
// input gradient's products and the GEMM tiles.)
const tiled = await Trainer.create({ ...options, tuning: 'gpu,split_threads=4096,gemm_groups=0,gemm_split=0,folds=7' });
out.tiledInfo = tiled.adapterInfo().tuning;
await tiled.setDataset(train);
out.tiled = Array.from(await tiled.step(2));
tiled.free();
await expectReject('badTuning', () => Trainer.create({ ...options, tuning: 'conv_ob=9' }));
// tune: the search of modelbatch tune, on a small MLP (few kernels: quick), then its best
// tuning given back to a trainer.
const mlp = { input: [1, 28, 28], layers: [{ type: 'flatten' }, { type: 'linear', out_features: 32 },
  { type: 'relu' }, { type: 'linear', out_features: 10 }] };
const mlpOptions = { model: mlp, models: 2, lr: 0.05, batchSize: 8 };
const progress = [];
const found = await tune(mlpOptions, train, { steps: 1, repeats: 1, warmup: 0, onProgress: (m) => progress.push(m) });
const fromTune = await Trainer.create({ ...mlpOptions, tuning: found.best });
out.tune = { best: found.best, speedup: found.speedup, start: found.start, measurements: found.measurements,
  progress: progress.length, info: fromTune.adapterInfo().tuning };
fromTune.free();
await expectReject('badTuneSetting', () => tune(mlpOptions, train, { speed: 1 }));
// Some keys only, in the order given; an unknown key is refused.
const some = await tune(mlpOptions, train, { steps: 1, repeats: 1, warmup: 0, keys: ['folds', 'gemm_tile'] });
out.tuneKeys = some.measurements.map((m) => m.key + (m.skipped ? ' (skipped)' : ''));
await expectReject('badTuneKey', () => tune(mlpOptions, train, { keys: ['gemm_tiles'] }));
trainer.free();
console.log(JSON.stringify(out));
`;

function safetensors(path) {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  const body = bytes.subarray(8 + n);
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const raw = body.subarray(t.data_offsets[0], t.data_offsets[1]);
    const values = t.dtype === 'F32'
      ? Array.from(new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)))
      : Array.from(new BigInt64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)), Number);
    out[name] = { dtype: t.dtype, shape: t.shape, values };
  }
  return out;
}

const close = (a, b, rel, abs) => Math.abs(a - b) <= abs + rel * Math.abs(b);

test('the npm package trains like the native engine (Node + Dawn)', { timeout: 900_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'modelbatch-node-'));
  t.after(() => rmSync(work, { recursive: true, force: true }));
  const env = { ...process.env };
  // The native reference runs on the machine's own Vulkan driver (lavapipe without a GPU).
  const nativeEnv = { ...process.env };
  if (process.env.VK_ICD_FILENAMES === '/usr/lib/chromium/vk_swiftshader_icd.json') delete nativeEnv.VK_ICD_FILENAMES;

  // The native reference runs while npm installs the package.
  const nativeArgs = ['run', '--quiet', '--example', 'web_reference', '--',
    '--model', config.model, '--models', String(config.models), '--steps', String(config.steps),
    '--batch-size', String(config.batch), '--optimizer', config.optimizer, '--lr-min', String(config.lrMin), '--lr-max', String(config.lrMax),
    '--momentum', String(config.momentum), '--seed', String(config.seed),
    '--train-samples', String(config.train), '--test-samples', String(config.test), '--save-dir', join(work, 'native')];
  const nativeRun = run('cargo', nativeArgs, { cwd: repoRoot, maxBuffer: 64 << 20, env: nativeEnv });

  const project = join(work, 'project');
  execFileSync('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'modelbatch-smoke', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', '--prefer-offline',
    tarball(), `webgpu@${webgpuVersion()}`], { cwd: project, stdio: ['ignore', 'ignore', 'inherit'] });
  const pkg = JSON.parse(readFileSync(join(project, 'node_modules', 'modelbatch', 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'modelbatch');
  assert.equal(pkg.license, 'MIT OR Apache-2.0');
  for (const f of ['modelbatch.d.ts', 'node.d.ts', 'README.md', 'LICENSE-MIT', 'LICENSE-APACHE', 'modelbatch_bg.wasm']) {
    assert.ok(existsSync(join(project, 'node_modules', 'modelbatch', f)), `package holds ${f}`);
  }
  const dts = readFileSync(join(project, 'node_modules', 'modelbatch', 'modelbatch.d.ts'), 'utf8');
  for (const s of ['step(n: number): Promise<Float32Array>', 'interface TrainerOptions', 'Promise<Prediction>',
    'copyModel(dst: number, src: number): Promise<void>', 'Promise<EnsembleResult>', 'setHyper(m: number, name: string, value: number): Promise<void>']) {
    assert.ok(dts.includes(s), `.d.ts declares ${s}`);
  }

  writeFileSync(join(project, 'run.mjs'), script(pathToFileURL(join(repoRoot, 'web', 'test', 'mnist.mjs')).href));
  const wasmRun = run('node', ['run.mjs', JSON.stringify(config), work], { cwd: project, env, maxBuffer: 64 << 20 });
  // Both children finish before anything is judged (no process outlives the test).
  const [wasmDone, nativeDone] = await Promise.allSettled([wasmRun, nativeRun]);
  for (const [what, done] of [['the wasm run', wasmDone], ['the native reference (cargo run --example web_reference)', nativeDone]]) {
    if (done.status === 'rejected') {
      const e = done.reason;
      throw new Error(`${what} failed: ${e.message}\n${e.stderr ?? ''}`);
    }
  }
  const [wasmOut, nativeOut] = [wasmDone.value, nativeDone.value];
  const lastLine = (s) => s.trim().split('\n').pop();
  const web = JSON.parse(lastLine(wasmOut.stdout));
  const native = JSON.parse(lastLine(nativeOut.stdout));
  const artifacts = process.env.MODELBATCH_WEB_ARTIFACTS ?? join(repoRoot, 'target', 'web-artifacts');
  mkdirSync(artifacts, { recursive: true });
  writeFileSync(join(artifacts, 'node-wasm.json'), JSON.stringify(web, null, 1));
  writeFileSync(join(artifacts, 'node-native.json'), JSON.stringify(native, null, 1));
  t.diagnostic(`wasm on ${web.adapter.name} (${web.adapter.backend}, ${web.adapter.deviceType}, tuning ${web.adapter.tuning}): ${config.steps} steps in ${web.trainSeconds.toFixed(2)} s; native on ${native.adapter}`);
  t.diagnostic(`wasm loss ${web.loss[0].map((x) => x.toFixed(4))} -> ${web.loss.at(-1).map((x) => x.toFixed(4))}; top-1 ${web.top1}`);

  const G = config.models;
  // Shapes and bookkeeping.
  assert.deepEqual(web.metricsShape, [0, config.steps, G, config.steps * G, config.steps * G]);
  assert.equal(web.stepCount, config.steps);
  assert.deepEqual(web.last, web.loss.at(-1));
  assert.equal(web.samples, config.test);
  assert.deepEqual(web.evaluateAgain, web.top1);
  // The ensemble of all models, and of model 2 alone (which scores as model 2).
  assert.equal(web.ensemble.all.samples, config.test);
  assert.deepEqual(web.ensemble.all.members, [...Array(G).keys()]);
  assert.ok(web.ensemble.all.top1 >= 0 && web.ensemble.all.top1 <= web.ensemble.all.top5 && web.ensemble.all.top5 <= 1);
  assert.deepEqual(web.ensemble.one.members, [2]);
  assert.ok(Math.abs(web.ensemble.one.top1 - web.top1[2]) < 1e-6, `ensemble of model 2: ${web.ensemble.one.top1} vs ${web.top1[2]}`);
  assert.ok(close(web.ensemble.one.loss, web.testLoss[2], 1e-4, 1e-5), `${web.ensemble.one.loss} vs ${web.testLoss[2]}`);

  // Losses fall for every model.
  const mean = (rows, m) => rows.reduce((s, r) => s + r[m], 0) / rows.length;
  for (let m = 0; m < G; m++) {
    const first = mean(web.loss.slice(0, 3), m);
    const end = mean(web.loss.slice(-3), m);
    assert.ok(end < first, `model ${m}: loss fell (${first.toFixed(4)} -> ${end.toFixed(4)})`);
  }

  // Equal to the native engine within float tolerance (SwiftShader against the native
  // adapter: the same kernels, different compilers). Adam keeps early training smooth;
  // SGD with a large learning rate would amplify rounding differences chaotically.
  assert.equal(native.loss.length, config.steps);
  let worst = 0;
  for (let s = 0; s < config.steps; s++) {
    for (let m = 0; m < G; m++) {
      worst = Math.max(worst, Math.abs(web.loss[s][m] - native.loss[s][m]));
      assert.ok(close(web.loss[s][m], native.loss[s][m], 1e-4, 1e-4),
        `step ${s} model ${m}: wasm loss ${web.loss[s][m]} vs native ${native.loss[s][m]}`);
    }
  }
  t.diagnostic(`largest loss difference wasm vs native: ${worst.toExponential(2)}`);
  for (let m = 0; m < G; m++) {
    assert.ok(Math.abs(web.top1[m] - native.top1[m]) <= 2 / config.test, `model ${m}: top-1 ${web.top1[m]} vs native ${native.top1[m]}`);
    assert.ok(close(web.testLoss[m], native.test_loss[m], 1e-4, 1e-4), `model ${m}: test loss ${web.testLoss[m]} vs native ${native.test_loss[m]}`);
  }

  // The exported safetensors is the file the native engine writes (names, dtypes, shapes; values within tolerance).
  const ours = safetensors(join(work, 'wasm-model-0.safetensors'));
  const theirs = safetensors(join(work, 'native', 'model-0.safetensors'));
  assert.deepEqual(Object.keys(ours).sort(), Object.keys(theirs).sort());
  for (const [name, t0] of Object.entries(theirs)) {
    assert.equal(ours[name].dtype, t0.dtype, name);
    assert.deepEqual(ours[name].shape, t0.shape, name);
    t0.values.forEach((v, i) => assert.ok(close(ours[name].values[i], v, 1e-3, 1e-4), `${name}[${i}]: ${ours[name].values[i]} vs ${v}`));
  }

  // Predictions: probabilities per model and for the ensemble.
  const C = web.predict.classes;
  assert.equal(C, 10);
  assert.equal(web.predict.probs.length, G * C);
  for (let m = 0; m < G; m++) {
    const row = web.predict.probs.slice(m * C, (m + 1) * C);
    assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-4, `model ${m} probabilities sum to 1`);
    assert.equal(web.predict.predicted[m], row.indexOf(Math.max(...row)));
  }
  assert.equal(web.predict.ensemble.models, G);
  assert.equal(web.predict.ensemble.votes.reduce((a, b) => a + b, 0), G);
  assert.ok(Math.abs(web.predict.ensemble.probs.reduce((a, b) => a + b, 0) - 1) < 1e-4);
  // Model 0's weights imported into model 1: identical predictions.
  assert.deepEqual(web.importedProbs[1], web.importedProbs[0]);

  // Errors: JavaScript exceptions with clear messages.
  const e = web.errors;
  assert.match(e.badSpec, /layer 0: unknown type "conv3d"/);
  assert.match(e.badJson, /model spec: invalid JSON/);
  assert.match(e.unknownOption, /unknown option "learningRate"/);
  assert.match(e.lrLength, /lr: 3 values given for 4 models/);
  assert.match(e.badOptimizer, /unknown optimizer "lbfgs"/);
  assert.match(e.badShape, /needs 784 image bytes, got 10/);
  assert.match(e.wrongInput, /do not fit the model's input \[1, 28, 28\]/);
  assert.match(e.badLabel, /label 10 at index 0 is >= 10 classes/);
  assert.match(e.badImage, /expected 1 image\(s\) of 784 pixels/);
  assert.match(e.badModelIndex, /model 99 does not exist/);
  assert.match(e.badImport, /not a safetensors file/);
  assert.match(e.noDataset, /call setDataset before step/);
  assert.match(e.badTuning, /tuning conv_ob: must be 1 to 8/);
  assert.match(e.badTuneSetting, /unknown tune setting "speed"/);
  assert.match(e.badTuneKey, /unknown tuning key "gemm_tiles"/);
  assert.match(e.badHyperName, /unknown hyper-parameter "lr2" \(one of lr, momentum/);
  assert.match(e.badHyperValue, /beta1 1.5 must be in \[0, 1\)/);
  assert.match(e.badCopy, /model 99 does not exist/);
  assert.match(e.badMember, /ensemble member 9 does not exist/);
  assert.match(e.copyNoDataset, /call setDataset before copyModel/);
  for (const [name, msg] of Object.entries(e)) {
    assert.ok(msg && msg.startsWith('modelbatch: '), `${name}: ${msg}`);
    assert.ok(!/panicked|unreachable|RuntimeError/.test(msg), `${name} is not a panic: ${msg}`);
  }
  // The lost device is reported; a new trainer works.
  assert.match(e.afterLoss, /device (was )?(lost|destroyed)/i);
  assert.match(web.deviceLost ?? '', /lost/i);
  assert.equal(web.recreated.length, G);
  // Population-based training through the package.
  assert.equal(web.pbt.lr[1], web.pbt.lr[0], 'the clone has its source\'s lr');
  assert.deepEqual(web.pbt.probs[1], web.pbt.probs[0], 'the clone predicts as its source');
  assert.equal(web.pbt.lr2, 0.5);
  assert.equal(web.pbt.rates[2], 0.5);
  assert.equal(web.pbt.rates[1], web.pbt.rates[0]);
  assert.equal(web.pbt.lr2After, 0.5, 'setHyper carries over a new dataset');
  assert.ok(Math.abs(web.pbt.beta2 - 0.999) < 1e-6, `beta2 ${web.pbt.beta2}`);
  assert.ok(web.recreated.every(Number.isFinite));
  // tune: every candidate reported, the start first, the best one of those measured.
  const tn = web.tune;
  assert.equal(tn.progress, tn.measurements.length);
  assert.equal(tn.measurements[0].key, 'start');
  assert.equal(tn.start, web.adapter.tuning);
  assert.ok(tn.measurements.length >= 2, JSON.stringify(tn.measurements));
  assert.ok(tn.measurements.some((m) => m.tuning === tn.best && m.stepsPerSecond > 0), JSON.stringify(tn));
  assert.ok(tn.speedup >= 1, `speedup ${tn.speedup}`);
  assert.equal(tn.info, tn.best);
  // folds 0, 3, 5 and 7; the MLP has nothing to pool, so 3, 5 and 7 compile to the kernels
  // of the start.
  // (A candidate that measures faster is checked against the best: "confirm" x3.)
  const keys = web.tuneKeys;
  keys.forEach((k, i) => {
    if (k !== 'confirm' && keys[i + 1] === 'confirm') assert.deepEqual(keys.slice(i + 1, i + 4), ['confirm', 'confirm', 'confirm'], keys.join());
  });
  assert.deepEqual(keys.filter((k) => k !== 'confirm'), ['start', 'folds', 'folds (skipped)', 'folds (skipped)', 'folds (skipped)', 'gemm_tile']);
  // Kernel shapes per adapter: reported, and a tuned trainer trains the same.
  assert.match(web.adapter.tuning, /split_threads=\d+/);
  assert.match(web.tunedInfo, /gemm_wg=4,.*gemm_split=16777216,.*conv_ob=2,.*conv_pixel=1,.*update_tensors=0,reduce_lanes=64/);
  web.tuned.forEach((x, m) => assert.ok(close(x, web.recreated[m], 1e-5, 1e-6), `tuned model ${m}: ${x} vs ${web.recreated[m]}`));
  assert.match(web.tiledInfo, /gemm_groups=0,gemm_tile=1,.*gemm_split=0,.*conv_tile=256,tile_px=4,grad_weight_tile=256,tile_kib=10,grad_input_col=64,sum_split=512,serial_sum=0,split_threads=4096,.*folds=7/);
  web.tiled.forEach((x, m) => assert.ok(close(x, web.recreated[m], 1e-5, 1e-6), `tiled model ${m}: ${x} vs ${web.recreated[m]}`));
});

// Browsers compile WGSL with Tint, which is stricter than naga (the native compiler): for
// example a constant expression may not evaluate to NaN or infinity. Every shader must
// compile there too (checked in a child process, as everything that loads Dawn here).
test('every WGSL shader compiles with Tint (Dawn, as in Chrome)', { timeout: 120_000 }, async () => {
  const { stdout } = await run('node', [join(repoRoot, 'web', 'test', 'wgsl-tint.mjs')], { env: process.env });
  const problems = JSON.parse(stdout.trim().split('\n').pop());
  assert.deepEqual(problems, [], problems.join('\n'));
});
