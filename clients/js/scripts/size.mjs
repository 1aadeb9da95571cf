// npm run size: the minified + gzipped size of the SDK beside centrifuge-js's and pusher-js's,
// measured the same way for all three: esbuild bundles everything the package's browser entry
// exports (--bundle --minify, ES module, browser platform), then gzip -9 (zlib level 9).
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';

import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const version = (pkg) => JSON.parse(readFileSync(join(root, 'node_modules', pkg, 'package.json'), 'utf8')).version;

const entries = [
  ['switchboard-client', `export * from ${JSON.stringify(join(root, 'dist', 'index.js'))};`, JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version],
  ['centrifuge', "export * from 'centrifuge';", version('centrifuge')],
  ['pusher-js', "export { default } from 'pusher-js';", version('pusher-js')],
];

const rows = [];
for (const [name, contents, v] of entries) {
  const out = await build({
    stdin: { contents, resolveDir: root, loader: 'js' },
    bundle: true, minify: true, format: 'esm', platform: 'browser', target: ['es2020'],
    write: false, logLevel: 'error', legalComments: 'none',
  });
  const code = out.outputFiles[0].contents;
  rows.push({ name: `${name} ${v}`, minified: code.length, gzipped: gzipSync(code, { level: 9 }).length });
}
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log('| package | minified | minified + gzip -9 |');
console.log('|---|---:|---:|');
for (const r of rows) console.log(`| ${r.name} | ${kb(r.minified)} | ${kb(r.gzipped)} |`);
