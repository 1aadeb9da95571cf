// npm run build: dist/index.js (one ES module, no runtime dependencies, bundled by esbuild)
// and dist/*.d.ts (tsc, which also type-checks everything).
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(join(root, 'package.json'), 'utf8')));

rmSync(join(root, 'dist'), { recursive: true, force: true });
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')], { stdio: 'inherit' });
await build({
  entryPoints: [join(root, 'src', 'index.ts')],
  outfile: join(root, 'dist', 'index.js'),
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: ['es2020'],
  legalComments: 'none',
  banner: { js: `// switchboard-client ${pkg.version} (Apache-2.0): built from clients/js/src; do not edit.` },
  logLevel: 'warning',
});
console.log('built dist/index.js and dist/index.d.ts');
