// The browser tests' harness: a page served from its own origin that loads the built
// dist/index.js as an ES module (as an application would), Debian's Chromium driven by
// playwright-core, and the real server (test/support/server.mjs) allowing that origin.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

import { startServer } from '../support/server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, '..', '..', 'dist', 'index.js');

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];
/** Fake camera and microphone, loopback ICE candidates as plain addresses. */
export const WEBRTC_ARGS = [
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>switchboard-client tests</title>
<script type="module" src="/page.js"></script>
`;

/** Serves the test page, its helpers and the SDK bundle on a port (origin) of its own. */
export async function startPageServer() {
  const files = {
    '/': ['text/html; charset=utf-8', () => PAGE],
    '/page.js': ['text/javascript; charset=utf-8', () => readFileSync(join(here, 'page.js'))],
    '/switchboard.js': ['text/javascript; charset=utf-8', () => readFileSync(bundle)],
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': file[0], 'cache-control': 'no-store' });
    res.end(file[1]());
  });
  await new Promise((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(() => ok()); }),
  };
}

/**
 * The page server, the server (allowing the page's origin), and Chromium. `page()` opens the
 * test page in a fresh context; `close()` ends it all.
 */
export async function setup({ args = [] } = {}) {
  const pages = await startPageServer();
  const sb = await startServer({ origins: [pages.origin] });
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: [...CHROMIUM_ARGS, ...args], timeout: 30_000 });
  const consoleLines = [];
  return {
    sb,
    pages,
    browser,
    consoleLines,
    async page(label = 'page') {
      const context = await browser.newContext();
      const page = await context.newPage();
      page.on('console', (m) => consoleLines.push(`[${label}] [${m.type()}] ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`[${label}] [pageerror] ${e.message}`));
      // getToken in the page asks the test for a token (the page cannot sign one itself).
      await page.exposeFunction('mintToken', (user, ttl) => sb.token(user, { ttl }));
      await page.goto(`${pages.origin}/`, { timeout: 10_000 });
      await page.waitForFunction(() => window.T?.ready === true, null, { timeout: 10_000 });
      return page;
    },
    async close() {
      await browser.close().catch(() => {});
      await sb.stop();
      await pages.close();
    },
  };
}

/** Polls `fn(arg)` in the page until it answers something truthy; fails after `timeout`. */
export async function waitIn(page, fn, arg, { timeout = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)?.slice(0, 500)})`);
    }
    await sleep(50);
  }
}

/** A client's record in the page (see page.js). */
export const snapshot = (page, key) => page.evaluate((k) => window.T.snapshot(k), key);

/** Runs `body`; a failure also shows the page console and the server's output. */
export async function withDiagnostics(env, body, extra = async () => '') {
  try {
    await body();
  } catch (e) {
    const more = await extra().catch((err) => `(${err.message})`);
    const diag = `\n--- page console (tail) ---\n${env.consoleLines.slice(-40).join('\n')}` +
      `\n--- server output (tail) ---\n${env.sb.output().split('\n').slice(-30).join('\n')}\n${more}`;
    if (e instanceof Error) e.stack = `${e.stack}${diag}`;
    throw e;
  }
}

/**
 * Checks one channel's deliveries: offsets exactly 1..count in order, each once, and the
 * payloads published. Answers the fault figures.
 */
export function deliveryFigures(record, count) {
  const offsets = record.messages.map((m) => m.offset);
  const seen = new Set();
  let repeated = 0;
  for (const o of offsets) {
    if (seen.has(o)) repeated++;
    seen.add(o);
  }
  let lost = 0;
  for (let o = 1; o <= count; o++) if (!seen.has(o)) lost++;
  const inOrder = offsets.every((o, i) => i === 0 || o > offsets[i - 1]);
  return { sent: count, received: offsets.length, repeated, lost, inOrder };
}
