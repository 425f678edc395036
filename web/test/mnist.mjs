// MNIST from the repository's data/mnist/*.gz (IDX files), for the Node tests.
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

function idx(name) {
  const bytes = gunzipSync(readFileSync(new URL(`../../data/mnist/${name}.gz`, import.meta.url)));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims = bytes[3];
  const shape = [];
  for (let i = 0; i < dims; i++) shape.push(view.getUint32(4 + 4 * i));
  return { shape, data: new Uint8Array(bytes.buffer, bytes.byteOffset + 4 + 4 * dims) };
}

/** The first `n` samples of a split ('train' or 't10k') as a modelbatch dataset. */
export function mnist(split, n) {
  const images = idx(`${split}-images-idx3-ubyte`);
  const labels = idx(`${split}-labels-idx1-ubyte`);
  const count = Math.min(n ?? images.shape[0], images.shape[0]);
  const px = images.shape[1] * images.shape[2];
  return {
    images: images.data.slice(0, count * px),
    labels: labels.data.slice(0, count),
    shape: [count, 1, images.shape[1], images.shape[2]],
    name: split,
  };
}
