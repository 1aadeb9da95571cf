// The real switchboard binary as a child process, for the Node test suites (tests/browser,
// tests/pusher): a config file in a temporary folder, a free port, `/health` awaited, the tail
// of its output kept for failure messages, and a clean stop. Node built-ins only, so each
// suite imports it without installing anything for it.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The server binary: `target/debug/switchboard` unless SWITCHBOARD_BIN says otherwise. */
export function serverBinary() {
  if (process.env.SWITCHBOARD_BIN) return process.env.SWITCHBOARD_BIN;
  const target = process.env.CARGO_TARGET_DIR
    ? resolve(repoRoot, process.env.CARGO_TARGET_DIR)
    : join(repoRoot, 'target');
  return join(target, 'debug', 'switchboard');
}

/** A unique suffix for channel and user names, so every test has channels of its own. */
export function uniq(prefix) {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A TCP port nobody listens on right now (the OS picks it). */
export async function freePort() {
  const srv = createNetServer();
  await new Promise((ok, fail) => srv.once('error', fail).listen(0, '127.0.0.1', ok));
  const { port } = srv.address();
  await new Promise((ok) => srv.close(ok));
  return port;
}

/**
 * Spawns a child process that keeps the tail of its output, is killed if the test process
 * exits first, and stops with SIGTERM, then SIGKILL after a grace period.
 */
export function spawnCaptured(command, args, options = {}) {
  const output = [];
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const keep = (chunk) => {
    output.push(chunk.toString());
    if (output.length > 400) output.splice(0, output.length - 400);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const proc = { child, output, exited: null };
  proc.exitPromise = new Promise((ok) => child.once('exit', (code, signal) => {
    proc.exited = { code, signal };
    ok(proc.exited);
  }));
  child.once('error', (e) => {
    output.push(`spawn error: ${e.message}\n`);
    proc.exited = proc.exited || { code: -1, signal: null };
  });
  proc.kill = () => { try { child.kill('SIGKILL'); } catch { /* gone */ } };
  process.once('exit', proc.kill);
  proc.stop = async (graceMs) => {
    process.removeListener('exit', proc.kill);
    if (!proc.exited) {
      child.kill('SIGTERM');
      const done = await Promise.race([proc.exitPromise, sleep(graceMs, null, { ref: false })]);
      if (!done) { child.kill('SIGKILL'); await proc.exitPromise; }
    }
  };
  return proc;
}

/**
 * Starts `switchboard serve --config <tmp toml>` on a free port and waits until `GET /health`
 * answers ok. `configFor(port)` (may be async) gives the config's text for the port picked;
 * a few ports are tried in case another process takes the one picked in between. Returns
 * `{ port, url, config, output(), stop() }`.
 */
export async function startSwitchboard({ configFor, tmpPrefix = 'switchboard-test-' }) {
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    try {
      return await launch(port, await configFor(port), tmpPrefix);
    } catch (e) {
      lastError = e;
      if (!/address|in use|bind/i.test(String(e.message))) break;
    }
  }
  throw lastError;
}

async function launch(port, config, tmpPrefix) {
  const bin = serverBinary();
  const dir = mkdtempSync(join(tmpdir(), tmpPrefix));
  const configPath = join(dir, 'switchboard.toml');
  writeFileSync(configPath, config);
  // SWITCHBOARD_BIN is the harness's; passed on, the server would take it for a config key.
  const { SWITCHBOARD_BIN: _harnessOnly, ...env } = process.env;
  const proc = spawnCaptured(bin, ['serve', '--config', configPath], {
    env: { ...env, RUST_BACKTRACE: '1' },
  });
  const { output } = proc;

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  let ready = false;
  while (Date.now() < deadline && !proc.exited) {
    try {
      const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.ok && (await res.json()).status === 'ok') { ready = true; break; }
    } catch { /* not listening yet */ }
    await sleep(50);
  }
  if (!ready) {
    proc.kill();
    await Promise.race([proc.exitPromise, sleep(2000, null, { ref: false })]);
    rmSync(dir, { recursive: true, force: true });
    const { exited } = proc;
    throw new Error(
      `switchboard did not become ready on ${url} (${exited ? `exited ${JSON.stringify(exited)}` : 'timed out'})\n` +
      `${bin} serve --config ${configPath}\n--- its output ---\n${output.join('')}`,
    );
  }

  return {
    port,
    url,
    config,
    output: () => output.join(''),
    async stop() {
      await proc.stop(7000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
