export * from './modelbatch.js';

/** Already initialised in Node; kept so that code written for the browser entry runs unchanged. */
export default function init(): Promise<void>;

/**
 * Makes `gpu` (a `GPU` object, e.g. `create([])` from the npm package `webgpu`) the
 * `navigator.gpu` that modelbatch finds (defining `navigator` and `Window` where missing).
 */
export function installNavigatorGpu(gpu: unknown): void;
