// The browser tests' harness: the real server binary on a free port, a page served from another
// origin (so every request from the page is cross-origin and CORS is exercised), Debian's
// Chromium driven by playwright-core, tokens minted here, and the server API for publishing.
//
// Nothing here knows how a door works: the page side lives in page/doors.js.

import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { createSocket } from 'node:dgram';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

import { spawnCaptured, startSwitchboard, uniq } from '../switchboard-process.mjs';

export { uniq };

const here = dirname(fileURLToPath(import.meta.url));

// 32 bytes at least: the server refuses a shorter HMAC secret.
export const TOKEN_SECRET = 'browser-secret-0123456789abcdef-0123456789';
export const API_KEY = 'browser-key';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/**
 * Extra Chromium flags for the WebRTC tests: fake camera and microphone, no permission prompt,
 * loopback ICE candidates allowed and host candidates as plain IPs (not mDNS names), so two
 * pages on one machine can call each other directly or through a TURN server on 127.0.0.1.
 */
export const WEBRTC_ARGS = [
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

/** A UDP port nobody is bound to on 127.0.0.1 right now (the OS picks it). */
export async function freeUdpPort() {
  const sock = createSocket('udp4');
  await new Promise((ok, fail) => sock.once('error', fail).bind(0, '127.0.0.1', ok));
  const { port } = sock.address();
  await new Promise((ok) => sock.close(ok));
  return port;
}

/** A loopback port free for both UDP and TCP (coturn listens on both). */
export async function freeUdpTcpPort() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await freeUdpPort();
    const tcp = createNetServer();
    const free = await new Promise((ok) => {
      tcp.once('error', () => ok(false));
      tcp.listen(port, '127.0.0.1', () => ok(true));
    });
    if (free) {
      await new Promise((ok) => tcp.close(ok));
      return port;
    }
  }
  throw new Error('no port free for both UDP and TCP');
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT over `claims`, signed with `secret`. */
export function signHs256(claims, secret = TOKEN_SECRET) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

/** A connection token for `user` that may subscribe and publish anything, valid for an hour. */
export function mintToken(user, { ttl = 3600, secret = TOKEN_SECRET, extra = {} } = {}) {
  const exp = Math.floor(Date.now() / 1000) + ttl;
  return signHs256({ sub: user, exp, subscribe: ['*'], publish: ['*'], ...extra }, secret);
}

// ---------------------------------------------------------------------------------------------
// The page server: a tiny node:http server on its own port serving the test page.

const PAGE_HTML = `<!doctype html>
<meta charset="utf-8">
<title>switchboard browser tests</title>
<script src="/doors.js"></script>
<p>switchboard browser tests</p>
`;

export async function startPageServer() {
  const doorsJs = readFileSync(join(here, 'page', 'doors.js'));
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/' || path === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE_HTML);
    } else if (path === '/doors.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(doorsJs);
    } else if (path === '/favicon.ico') {
      res.writeHead(204);
      res.end();
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return {
    port,
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(() => ok()); }),
  };
}

// ---------------------------------------------------------------------------------------------
// The server.

function configToml({ port, origins, extraToml }) {
  const lines = [
    `listen = "127.0.0.1:${port}"`,
    '',
    '[auth]',
    `token_secret = "${TOKEN_SECRET}"`,
    `api_key = "${API_KEY}"`,
  ];
  if (origins) lines.push(`allowed_origins = [${origins.map((o) => JSON.stringify(o)).join(', ')}]`);
  if (extraToml) lines.push('', extraToml.trim());
  return lines.join('\n') + '\n';
}

/**
 * Starts the server allowing `origins` for CORS (see `startSwitchboard`). `extraToml` is
 * appended to the config (tables after `[auth]`, such as `[webrtc]`); a function gets a fresh
 * `{ udpPort }` on each attempt.
 */
export async function startServer({ origins = [], extraToml = '' } = {}) {
  const server = await startSwitchboard({
    tmpPrefix: 'switchboard-browser-',
    configFor: async (port) => {
      const extra = typeof extraToml === 'function' ? extraToml({ udpPort: await freeUdpPort() }) : extraToml;
      return configToml({ port, origins, extraToml: extra });
    },
  });
  const base = server.url;
  return {
    ...server,
    wsUrl: `ws://127.0.0.1:${server.port}`,
    origins,
    token: (user, opts) => mintToken(user, opts),
    async api(method, path, body) {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${path} -> HTTP ${res.status}: ${text}`);
      return JSON.parse(text);
    },
    /** POST /api/publish; answers `{offset, epoch}`. */
    publish(channel, data) {
      return this.api('POST', '/api/publish', { channel, data });
    },
    /** POST /api/disconnect; answers `{disconnected: N}`. */
    disconnect(user) {
      return this.api('POST', '/api/disconnect', { user });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The browser.

/** Debian's Chromium with the usual flags, plus `args` (such as `WEBRTC_ARGS`). */
export function launchBrowser({ args = [] } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM_PATH, headless: true, args: [...CHROMIUM_ARGS, ...args], timeout: 30_000,
  });
}

/**
 * Everything a test needs: the page server, the server (allowing the page's origin), Chromium
 * and one page already showing the test page. `close()` tears it all down, server last.
 */
export async function setup() {
  const pages = await startPageServer();
  let sb;
  let browser;
  try {
    sb = await startServer({ origins: [pages.origin] });
    browser = await launchBrowser();
  } catch (e) {
    await browser?.close();
    await sb?.stop();
    await pages.close();
    throw e;
  }
  const context = await browser.newContext();
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  await page.goto(`${pages.origin}/`, { timeout: 10_000 });
  await page.waitForFunction(() => typeof window.sb === 'object', null, { timeout: 5_000 });
  return {
    sb,
    pages,
    browser,
    context,
    page,
    consoleLines,
    async close() {
      await browser.close().catch(() => {});
      await sb.stop();
      await pages.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Waiting and asserting.

/**
 * Polls the page's state (`window.sb.snapshot(key)`) until `pred(state)` holds, or fails after
 * `timeout` ms with `what` and a summary of what the page had.
 */
export async function waitForPage(page, key, pred, { timeout = 5000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let state;
  for (;;) {
    state = await page.evaluate((k) => window.sb.snapshot(k), key);
    if (pred(state)) return state;
    if (Date.now() > deadline) break;
    await sleep(40);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}\npage state: ${summarize(state)}`);
}

/** A short, readable account of a door's state for failure messages. */
export function summarize(state) {
  if (!state) return String(state);
  const frames = (state.frames || []).map((r) => {
    const f = r.frame;
    if (!f || typeof f !== 'object') return JSON.stringify(r);
    if (f.type === 'message') return `message(${f.channel}#${f.offset})`;
    if (f.type === 'subscribed') return `subscribed(${f.channel} offset=${f.offset} recovered=${f.recovered})`;
    return JSON.stringify(f).slice(0, 160);
  });
  const rest = { ...state };
  delete rest.frames;
  return `${JSON.stringify(rest).slice(0, 2000)}\nframes (${frames.length}): ${frames.join(', ').slice(0, 4000)}`;
}

export const messagesOf = (state) => state.frames.map((r) => r.frame).filter((f) => f && f.type === 'message');
export const framesOfType = (state, type) => state.frames.filter((r) => r.frame && r.frame.type === type);

/**
 * Publishes `count` messages to each channel, interleaved (a1 b1 a2 b2 ...), recording what was
 * published in `published` (channel -> [{offset, epoch, data}]) and checking the API's offsets.
 * Answers when the first publish and the last were done (`Date.now()`, the page's clock too).
 */
export async function publishRound(sb, published, channels, count, label) {
  let firstDoneAt = null;
  for (let i = 0; i < count; i++) {
    for (const channel of channels) {
      const list = published.get(channel) || [];
      published.set(channel, list);
      const data = { label, n: list.length + 1, channel, note: `${label} ${i} ${randomBytes(3).toString('hex')}` };
      const answer = await sb.publish(channel, data);
      if (answer.offset !== list.length + 1) {
        throw new Error(`/api/publish on ${channel} answered offset ${answer.offset}, expected ${list.length + 1}`);
      }
      list.push({ offset: answer.offset, epoch: answer.epoch, data });
      firstDoneAt ??= Date.now();
    }
  }
  return { firstDoneAt, doneAt: Date.now() };
}

export const publishedCount = (published) => [...published.values()].reduce((n, l) => n + l.length, 0);

/**
 * The heart of every door test: per channel, the message frames the page received have offsets
 * exactly 1..N in order (no gap, no repeat), one epoch, each carrying the very payload published
 * at that offset and a string cursor; and no message arrived for a channel nobody published to.
 */
export function assertExactlyOnce(assert, state, published, { cursors = true } = {}) {
  const received = new Map();
  for (const f of messagesOf(state)) {
    if (!received.has(f.channel)) received.set(f.channel, []);
    received.get(f.channel).push(f);
  }
  for (const channel of received.keys()) {
    assert.ok(published.has(channel), `a message arrived for ${channel}, which nobody published to`);
  }
  for (const [channel, sent] of published) {
    const got = received.get(channel) || [];
    const offsets = got.map((f) => f.offset);
    const expected = sent.map((m) => m.offset);
    assert.deepStrictEqual(offsets, expected, `offsets received on ${channel} (expected exactly 1..${sent.length}, in order, once each)`);
    for (let i = 0; i < sent.length; i++) {
      assert.deepStrictEqual(got[i].data, sent[i].data, `payload of ${channel} offset ${sent[i].offset}`);
      assert.strictEqual(got[i].epoch, sent[i].epoch, `epoch of ${channel} offset ${sent[i].offset}`);
      if (!cursors) continue;
      assert.strictEqual(typeof got[i].cursor, 'string', `${channel} offset ${sent[i].offset} carries a cursor`);
      assert.ok(got[i].cursor.length > 0, `${channel} offset ${sent[i].offset} carries a non-empty cursor`);
    }
    const payloads = got.map((f) => JSON.stringify(f.data));
    assert.strictEqual(new Set(payloads).size, payloads.length, `no payload repeated on ${channel}`);
  }
}

/**
 * Runs a test body; when it fails, the error also carries the tail of the server's output and
 * what the page printed, so a CI log shows why.
 */
export async function withDiagnostics(env, body) {
  try {
    await body();
  } catch (e) {
    const serverTail = env?.sb ? env.sb.output().split('\n').slice(-40).join('\n') : '(no server)';
    const consoleTail = env?.consoleLines ? env.consoleLines.slice(-30).join('\n') : '';
    const diag = `\n--- server output (tail) ---\n${serverTail}\n--- page console (tail) ---\n${consoleTail}`;
    // Reporters print the stack (made with the error, message included), so the tail goes there.
    if (e instanceof Error && typeof e.stack === 'string') e.stack += diag;
    else if (e instanceof Error) e.message += diag;
    throw e;
  }
}

/** Waits `ms` more (so late repeats would show up), then answers the page's state. */
export async function settle(page, key, ms = 300) {
  await sleep(ms);
  return page.evaluate((k) => window.sb.snapshot(k), key);
}

/** The `subscribed` frames that came after the `n`th `connected` (0-based) of a door's state. */
export function subscribedAfterConnect(state, n) {
  let seen = -1;
  const out = [];
  for (const r of state.frames) {
    if (r.frame?.type === 'connected') seen++;
    else if (r.frame?.type === 'subscribed' && seen === n) out.push(r.frame);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// coturn, as a real TURN server to prove interop against.

/** Whether coturn's `turnserver` is on the PATH. */
export function haveCoturn() {
  return (process.env.PATH || '').split(':').some((d) => {
    try { return statSync(join(d, 'turnserver')).isFile(); } catch { return false; }
  });
}

/** Sends STUN Binding requests to 127.0.0.1:`port` until one is answered (or `timeout` ms). */
export async function waitForStun(port, { timeout = 5000 } = {}) {
  const sock = createSocket('udp4');
  const answered = new Promise((ok) => sock.once('message', ok));
  await new Promise((ok) => sock.bind(0, '127.0.0.1', ok));
  const deadline = Date.now() + timeout;
  try {
    while (Date.now() < deadline) {
      // Binding request: type 0x0001, length 0, the magic cookie, a 96-bit transaction id.
      const req = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), randomBytes(12)]);
      sock.send(req, port, '127.0.0.1');
      const got = await Promise.race([answered, sleep(150, null)]);
      if (got) return;
    }
    throw new Error(`no STUN answer from 127.0.0.1:${port} within ${timeout} ms`);
  } finally {
    sock.close();
  }
}

/**
 * Starts coturn on 127.0.0.1 (UDP and TCP on a free port, relays on 127.0.0.1 in a small port
 * range) with TURN REST credentials over `secret` (`use-auth-secret`), and waits until it
 * answers STUN. `stop()` ends it; `output()` is its log.
 */
export async function startCoturn(options) {
  // A port can be taken between choosing and binding it: try a few.
  let lastError;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await launchCoturn(options);
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

async function launchCoturn({ secret, realm = 'switchboard' }) {
  const dir = mkdtempSync(join(tmpdir(), 'switchboard-coturn-'));
  const port = await freeUdpTcpPort();
  const minPort = 50000 + Math.floor(Math.random() * 150) * 60;
  const args = [
    '-n', '--log-file=stdout', '--simple-log',
    `--listening-ip=127.0.0.1`, `--listening-port=${port}`, `--relay-ip=127.0.0.1`,
    '--use-auth-secret', `--static-auth-secret=${secret}`, `--realm=${realm}`,
    '--allow-loopback-peers', '--no-cli', '--no-tls', '--no-dtls', '--fingerprint',
    `--min-port=${minPort}`, `--max-port=${minPort + 59}`,
    `--userdb=${join(dir, 'turndb')}`, `--pidfile=${join(dir, 'turnserver.pid')}`,
  ];
  const proc = spawnCaptured('turnserver', args);
  const { output } = proc;
  const stop = async () => {
    await proc.stop(3000);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.race([
      waitForStun(port),
      proc.exitPromise.then((e) => { throw new Error(`turnserver exited ${JSON.stringify(e)}`); }),
    ]);
  } catch (e) {
    await stop();
    throw new Error(`coturn did not start: ${e.message}\nturnserver ${args.join(' ')}\n--- its output ---\n${output.join('').slice(-4000)}`);
  }
  return { port, url: `turn:127.0.0.1:${port}?transport=udp`, output: () => output.join(''), stop };
}
