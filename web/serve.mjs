// A small static server for the demo page on 127.0.0.1: web/ at the root, the npm build
// at /pkg/ and MNIST at /data/mnist/ (the .gz files as they are: the page decompresses
// them with DecompressionStream). Correct MIME types for .wasm and .mjs.
//
//   node web/serve.mjs [--port 8080] [--host 127.0.0.1]
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.gz': 'application/gzip',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ts': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
};

const MOUNTS = [
  ['/pkg/', join(root, 'pkg')],
  ['/data/mnist/', join(root, 'data', 'mnist')],
  ['/', join(root, 'web')],
];

function resolve(urlPath) {
  let path;
  try {
    path = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (path.endsWith('/')) path += 'index.html';
  for (const [prefix, dir] of MOUNTS) {
    if (!path.startsWith(prefix)) continue;
    const file = normalize(join(dir, path.slice(prefix.length)));
    if (file !== dir && !file.startsWith(dir + sep)) return null;
    if (prefix === '/' && (file.startsWith(join(dir, 'node_modules')) || file.startsWith(join(dir, 'test')))) return null;
    return file;
  }
  return null;
}

/** Starts the server; resolves to `{ server, url }` once it listens. */
export function serve({ port = 8080, host = '127.0.0.1', quiet = false } = {}) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    const file = resolve(url.pathname);
    let st = null;
    try {
      st = file && statSync(file);
    } catch {
      st = null;
    }
    if (!st || !st.isFile() || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(st ? 405 : 404, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(st ? 'method not allowed\n' : `not found: ${url.pathname}\n`);
      if (!quiet) console.log(`${req.method} ${url.pathname} -> ${st ? 405 : 404}`);
      return;
    }
    res.writeHead(200, {
      'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
      'content-length': st.size,
      'cache-control': 'no-cache',
    });
    if (req.method === 'HEAD') return res.end();
    createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => {
      const { port: p } = server.address();
      ok({ server, url: `http://${host}:${p}/` });
    });
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt;
  };
  const { url } = await serve({ port: Number(arg('--port', 8080)), host: arg('--host', '127.0.0.1'), quiet: true });
  console.log(`modelbatch demo: ${url}  (Ctrl-C to stop)`);
}
