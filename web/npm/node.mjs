// Node entry of the `modelbatch` package: the same WebAssembly module as the browser
// entry, instantiated synchronously from the file beside it. WebGPU comes from the host:
// pass a GPU object (for example `create([])` of the npm package `webgpu`) to
// installNavigatorGpu() before creating a trainer.
import { readFileSync } from 'node:fs';
import { initSync } from './modelbatch.js';

export * from './modelbatch.js';

initSync({ module: readFileSync(new URL('./modelbatch_bg.wasm', import.meta.url)) });

/** Already initialised in Node; kept so that code written for the browser entry runs unchanged. */
export default async function init() {}

/**
 * Makes `gpu` (a `GPU` object, e.g. `create([])` from the npm package `webgpu`) the
 * `navigator.gpu` that modelbatch finds. wgpu looks for it the way a browser page does,
 * on a global `navigator` next to a global `Window`; both are defined where missing.
 */
export function installNavigatorGpu(gpu) {
  if (!gpu || typeof gpu.requestAdapter !== 'function') {
    throw new TypeError('installNavigatorGpu: expected a GPU object with requestAdapter()');
  }
  if (typeof globalThis.navigator === 'undefined') {
    Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
  }
  Object.defineProperty(globalThis.navigator, 'gpu', { value: gpu, configurable: true, writable: true });
  if (typeof globalThis.Window === 'undefined') {
    Object.defineProperty(globalThis, 'Window', { value: class Window {}, configurable: true, writable: true });
  }
}
