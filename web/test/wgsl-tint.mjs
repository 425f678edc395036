// Compiles every shaders/*.wgsl with Tint (Dawn, through the npm package `webgpu`), the
// WGSL compiler of Chrome, and prints the errors as JSON lines ("[]" when all compile).
// Tint is stricter than naga: e.g. a constant expression may not be NaN or infinite.
//
//   VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json node web/test/wgsl-tint.mjs
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, globals } from 'webgpu';

import { repoRoot } from './mnist.mjs';

Object.assign(globalThis, globals);
// Held for the whole run: Dawn's instance dies with this object (a temporary crashes Node).
const gpu = create([]);
const adapter = await gpu.requestAdapter();
if (!adapter) throw new Error('Dawn found no adapter (set VK_ICD_FILENAMES to a Vulkan ICD, e.g. SwiftShader)');
const device = await adapter.requestDevice();
const dir = join(repoRoot, 'shaders');
const problems = [];
for (const file of readdirSync(dir).filter((f) => f.endsWith('.wgsl')).sort()) {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ label: file, code: readFileSync(join(dir, file), 'utf8') });
  const info = await module.getCompilationInfo();
  await device.popErrorScope();
  for (const m of info.messages.filter((m) => m.type === 'error')) {
    problems.push(`shaders/${file}:${m.lineNum}:${m.linePos}: ${m.message}`);
  }
}
device.destroy();
console.log(JSON.stringify(problems));
process.exit(0);
