// The demo page in headless Chromium (playwright-core driving Debian's `chromium`, WebGPU
// on SwiftShader through --enable-unsafe-webgpu): start training 8 LeNets from the page's
// controls, wait until the best model's test accuracy is well above chance, check that
// every model's loss fell and that nothing was logged as an error, draw a digit, and save
// screenshots as artefacts: target/web-artifacts/demo.png (and demo-no-webgpu.png, the
// page where WebGPU is missing).
//
//   node --test web/test/browser.test.mjs
//
// SwiftShader runs WebGPU on the CPU, so the run is kept small: 16 images per model per
// step, Adam with learning rates 5e-4 to 3e-3 (every one of them learns within a hundred
// steps; SGD's large rates would stall some models), 1,000 test images per evaluation; it stops once the
// best test top-1 is 50 % (after at least 120 steps) or after 600 steps, and must be at
// least 3x chance (30 %) then.
//
// Environment: CHROMIUM (default /usr/bin/chromium), MODELBATCH_WEB_ARTIFACTS (default
// target/web-artifacts), MODELBATCH_BROWSER_TARGET (best top-1 to stop at, default 0.5),
// MODELBATCH_BROWSER_STEPS (step budget, default 600).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { serve } from '../serve.mjs';
import { repoRoot } from './mnist.mjs';

const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const artifacts = process.env.MODELBATCH_WEB_ARTIFACTS ?? join(repoRoot, 'target', 'web-artifacts');
const target = Number(process.env.MODELBATCH_BROWSER_TARGET ?? 0.5);
const budget = Number(process.env.MODELBATCH_BROWSER_STEPS ?? 600);
const ABOVE_CHANCE = 0.3;
const MIN_STEPS = 120;
const MODELS = 8;

const FLAGS = [
  '--enable-unsafe-webgpu',
  '--headless=new',
  '--no-sandbox',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function launch(t) {
  assert.ok(existsSync(executablePath), `${executablePath} missing: apt-get install chromium (scripts/test-web does)`);
  const profile = mkdtempSync(join(tmpdir(), 'modelbatch-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: FLAGS,
    viewport: { width: 1360, height: 1000 },
  });
  t.after(async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  });
  return context;
}

function watch(page) {
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console.error: ${msg.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  return problems;
}

// A "7" drawn with the mouse on the pad.
async function drawSeven(page) {
  const box = await page.locator('#pad').boundingBox();
  const at = (x, y) => [box.x + x * box.width, box.y + y * box.height];
  await page.mouse.move(...at(0.25, 0.22));
  await page.mouse.down();
  for (const [x, y] of [[0.45, 0.22], [0.72, 0.22], [0.62, 0.45], [0.52, 0.65], [0.45, 0.82]]) {
    await page.mouse.move(...at(x, y), { steps: 8 });
  }
  await page.mouse.up();
}

test('the demo page trains 8 LeNets in headless Chromium', { timeout: 1_200_000 }, async (t) => {
  mkdirSync(artifacts, { recursive: true });
  const { server, url } = await serve({ port: 0, quiet: true });
  t.after(() => server.close());
  const context = await launch(t);
  const page = await context.newPage();
  const problems = watch(page);
  try {
    await trainAndCheck(t, page, problems, url);
  } catch (e) {
    // The page as it was: target/web-artifacts/demo-failure.png.
    await page.screenshot({ path: join(artifacts, 'demo-failure.png'), fullPage: true }).catch(() => {});
    throw e;
  }
});

async function trainAndCheck(t, page, problems, url) {
  await page.goto(`${url}?test=1000&batch=16&lrMin=0.0005&lrMax=0.003`);
  await page.waitForFunction(() => ['ready', 'error', 'no-webgpu'].includes(window.demoState?.status), null, { timeout: 120_000 });
  let state = await page.evaluate(() => window.demoState);
  assert.equal(state.status, 'ready', `page is ready to train: ${JSON.stringify(state.errors)}`);
  t.diagnostic(`adapter: ${state.adapter}`);

  // Eight models, from the page's controls.
  await page.locator('#models').fill(String(MODELS));
  assert.equal(await page.locator('#models-out').textContent(), String(MODELS));
  await page.locator('#optimizer').selectOption('adam');
  const t0 = Date.now();
  await page.click('#start');
  // Until the best model reaches the target after at least MIN_STEPS steps (so that the
  // slowest learning rates have moved too), or the step budget runs out.
  await page.waitForFunction(
    ([goal, least, steps]) => {
      const s = window.demoState;
      return s.status === 'error' || (s.bestTop1 >= goal && s.step >= least) || s.step >= steps;
    },
    [target, MIN_STEPS, budget],
    { timeout: 900_000, polling: 1000 },
  );
  assert.deepEqual(await page.evaluate(() => window.demoState.errors), [], 'the page trains without errors');
  // Pause (which evaluates once more) and read the state.
  await page.click('#pause');
  await page.waitForFunction(() => ['paused', 'error'].includes(window.demoState.status), null, { timeout: 300_000 });
  const seconds = (Date.now() - t0) / 1000;
  await drawSeven(page);
  // Until the prediction of the whole drawing is shown (strokes ask again while one runs).
  await page.waitForFunction(() => document.getElementById('best-digit').textContent !== '–' && !window.demoState.predicting,
    null, { timeout: 60_000 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(artifacts, 'demo.png'), fullPage: true });
  state = await page.evaluate(() => window.demoState);
  const stats = await page.evaluate(() =>
    Object.fromEntries(['stat-step', 'stat-samples', 'stat-steps', 'stat-best', 'stat-ensemble', 'best-digit', 'ens-digit', 'adapter']
      .map((id) => [id, document.getElementById(id).textContent])));
  t.diagnostic(`${state.step} steps in ${seconds.toFixed(0)} s; ${JSON.stringify(stats)}`);
  t.diagnostic(`first loss ${state.firstLoss.map((x) => x.toFixed(3))}; last ${state.lastLoss.map((x) => x.toFixed(3))}`);

  assert.deepEqual(state.errors, []);
  assert.equal(state.models, MODELS);
  assert.equal(state.lr.length, MODELS);
  assert.ok(state.bestTop1 >= Math.min(target, ABOVE_CHANCE),
    `best test top-1 ${state.bestTop1} after ${state.step} steps is well above chance (10 %)`);
  // Loss fell for every model: the mean of its last three points below that of its first three.
  for (let m = 0; m < MODELS; m++) {
    const h = state.history[m];
    assert.ok(h.length >= 6, `model ${m} has a loss curve`);
    const mean = (pts) => pts.reduce((a, p) => a + p.loss, 0) / pts.length;
    assert.ok(mean(h.slice(-3)) < mean(h.slice(0, 3)), `model ${m} (lr ${state.lr[m]}): loss fell`);
  }
  assert.ok(Number(stats['stat-samples'].replace(/,/g, '')) > 0, 'samples/s shown');
  assert.match(stats['best-digit'], /^\d$/);
  assert.match(stats['ens-digit'], /^\d \(\d+ of \d+ models/);
  // The ensemble's test accuracy, shown and kept with each evaluation.
  assert.match(stats['stat-ensemble'], /^\d+\.\d% \(\d+ models\)$/);
  const lastEval = state.evals.at(-1);
  assert.ok(lastEval.ensemble > 0.1 && lastEval.ensemble <= 1, `ensemble top-1 ${lastEval.ensemble}`);
  assert.deepEqual(problems, [], 'no console errors, page errors or failed requests');
}

test('without WebGPU the page says which browsers and flags enable it', { timeout: 120_000 }, async (t) => {
  mkdirSync(artifacts, { recursive: true });
  const { server, url } = await serve({ port: 0, quiet: true });
  t.after(() => server.close());
  const context = await launch(t);
  const page = await context.newPage();
  const problems = watch(page);
  await page.addInitScript(() => {
    delete Navigator.prototype.gpu;
  });
  await page.goto(url);
  await page.waitForFunction(() => window.demoState?.status === 'no-webgpu', null, { timeout: 60_000 });
  assert.ok(await page.locator('#no-webgpu').isVisible());
  const text = await page.locator('#no-webgpu').textContent();
  for (const s of ['Chrome', '--enable-unsafe-webgpu', 'Safari', 'Firefox', 'localhost']) {
    assert.ok(text.includes(s), `the message mentions ${s}`);
  }
  assert.ok(await page.locator('#start').isDisabled());
  await page.screenshot({ path: join(artifacts, 'demo-no-webgpu.png'), fullPage: true });
  assert.deepEqual(problems, []);
});
