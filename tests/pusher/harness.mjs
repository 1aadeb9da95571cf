// The Pusher tests' harness: the real switchboard binary on a free port with a Pusher app
// configured, the unmodified pusher-js client (its Node build, WebSocket transport only) and
// the official `pusher` server SDK pointed at it, plus a plain WebSocket for the native door.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import PusherJs from 'pusher-js';
import WebSocket from 'ws';
import PusherServer from 'pusher';

import { startSwitchboard, uniq } from '../switchboard-process.mjs';

export const APP = { id: '1001', key: 'app-key', secret: 'app-secret' };
export const API_KEY = 'pusher-tests-api-key';
// 32 bytes at least: the server refuses a shorter HMAC secret.
export const TOKEN_SECRET = 'pusher-tests-token-secret-0123456789abcdef';

/** How long a test waits for something that should happen at once. */
export const WAIT = 5000;

export { sleep, uniq };

/**
 * Starts the server (see `startSwitchboard`) with the test app, `appToml` appended to its
 * `[[pusher.apps]]` table (e.g. webhooks) and `extraToml` before it.
 */
export async function startServer({ appToml = '', extraToml = '' } = {}) {
  const server = await startSwitchboard({
    tmpPrefix: 'switchboard-pusher-',
    configFor: (port) => [
      `listen = "127.0.0.1:${port}"`,
      '',
      '[auth]',
      `token_secret = "${TOKEN_SECRET}"`,
      `api_key = "${API_KEY}"`,
      'allow_anonymous = true',
      '',
      extraToml,
      '',
      '[[pusher.apps]]',
      `id = "${APP.id}"`,
      `key = "${APP.key}"`,
      `secret = "${APP.secret}"`,
      'enable_client_events = true',
      'max_client_events_per_second = 20',
      appToml,
      '',
    ].join('\n'),
  });
  const { port } = server;
  const clients = [];
  return {
    ...server,
    /** The official server SDK, configured for this server. */
    sdk(app = APP) {
      return new PusherServer({
        appId: app.id,
        key: app.key,
        secret: app.secret,
        host: '127.0.0.1',
        port: String(port),
        useTLS: false,
      });
    },
    /**
     * A pusher-js client. Channel authorization and user sign-in are signed by the SDK in
     * the test (what an app's auth endpoint does), unless `authorize`/`authenticate` say
     * otherwise.
     */
    client({ presence, user, authorize, authenticate, app = APP, transports = ['ws'] } = {}) {
      const sdk = this.sdk(app);
      const client = new PusherJs(app.key, {
        wsHost: '127.0.0.1',
        wsPort: port,
        httpHost: '127.0.0.1',
        httpPort: port,
        forceTLS: false,
        enabledTransports: transports,
        disableStats: true,
        cluster: 'test',
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, callback) => {
            try {
              const auth = authorize
                ? authorize(socketId, channelName)
                : sdk.authorizeChannel(socketId, channelName, channelName.startsWith('presence-') ? presence : undefined);
              callback(null, auth);
            } catch (e) {
              callback(e, null);
            }
          },
        },
        userAuthentication: {
          customHandler: ({ socketId }, callback) => {
            try {
              const auth = authenticate ? authenticate(socketId) : sdk.authenticateUser(socketId, user);
              callback(null, auth);
            } catch (e) {
              callback(e, null);
            }
          },
        },
      });
      clients.push(client);
      return client;
    },
    async stop() {
      for (const c of clients) {
        try { c.disconnect(); } catch { /* already */ }
      }
      await server.stop();
    },
  };
}

/** Resolves with the first `event` of `emitter` (pusher-js channel or connection). */
export function once(emitter, event, ms = WAIT) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`no ${event} within ${ms} ms`)), ms);
    const handler = (data) => {
      clearTimeout(timer);
      emitter.unbind(event, handler);
      ok(data);
    };
    emitter.bind(event, handler);
  });
}

/** Waits until a pusher-js client is connected; returns its socket id. */
export async function connected(client) {
  if (client.connection.state !== 'connected') {
    await once(client.connection, 'connected');
  }
  return client.connection.socket_id;
}

/** Subscribes and waits for `pusher:subscription_succeeded`; returns [channel, its data]. */
export async function subscribed(client, name) {
  const channel = client.subscribe(name);
  const data = await once(channel, 'pusher:subscription_succeeded');
  return [channel, data];
}

/** Collects every `event` of a channel into an array. */
export function collect(channel, event) {
  const got = [];
  channel.bind(event, (data, meta) => got.push({ data, meta }));
  return got;
}

/** Waits until `check()` is truthy. */
export async function until(check, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await check();
    if (value) return value;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A native WebSocket client of `/ws` that subscribes to `channel` and collects frames. */
export async function nativeSubscriber(server, channel) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws`);
  const frames = [];
  ws.addEventListener('message', (e) => frames.push(JSON.parse(String(e.data))));
  await new Promise((ok, fail) => {
    ws.addEventListener('open', ok, { once: true });
    ws.addEventListener('error', fail, { once: true });
  });
  ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel }));
  await until(() => frames.find((f) => f.type === 'reply' && f.id === 1), 'native subscribe reply');
  return { ws, frames, send: (f) => ws.send(JSON.stringify(f)), close: () => ws.close() };
}

/** A raw WebSocket to the Pusher door, for what pusher-js would never send. */
export async function rawPusher(server, path) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}${path}`);
  const frames = [];
  let closed = null;
  ws.addEventListener('message', (e) => frames.push(JSON.parse(String(e.data))));
  const closedPromise = new Promise((ok) => ws.addEventListener('close', (e) => {
    closed = { code: e.code, reason: e.reason };
    ok(closed);
  }));
  await new Promise((ok, fail) => {
    ws.addEventListener('open', ok, { once: true });
    ws.addEventListener('error', fail, { once: true });
  });
  return {
    ws,
    frames,
    closed: () => closed,
    closedPromise,
    send: (f) => ws.send(typeof f === 'string' ? f : JSON.stringify(f)),
    close: () => ws.close(),
  };
}

/**
 * A test CA and a certificate it signed for 127.0.0.1 and localhost, made with openssl in a
 * temporary folder. Returns the PEM paths and a `remove()`.
 */
export function makeCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'sb-pusher-tls-'));
  const path = (name) => join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  const curve = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...curve, '-days', '1', '-subj', '/CN=switchboard test CA',
    '-keyout', path('ca.key'), '-out', path('ca.pem'));
  openssl('req', '-new', ...curve, '-subj', '/CN=127.0.0.1', '-keyout', path('server.key'),
    '-out', path('server.csr'));
  writeFileSync(path('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n');
  openssl('x509', '-req', '-in', path('server.csr'), '-CA', path('ca.pem'), '-CAkey', path('ca.key'),
    '-CAcreateserial', '-days', '1', '-extfile', path('server.ext'), '-out', path('server.pem'));
  return {
    ca: path('ca.pem'),
    cert: path('server.pem'),
    key: path('server.key'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/**
 * A webhook receiver: an http server (https with `tls`, from `makeCertificate()`) collecting
 * `{headers, rawBody}` of each request.
 */
export async function webhookReceiver({ failFirst = 0, tls = null } = {}) {
  const requests = [];
  let failures = 0;
  const handle = (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      if (failures < failFirst) {
        failures += 1;
        res.writeHead(500);
        res.end('try again');
        return;
      }
      requests.push({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200);
      res.end('ok');
    });
  };
  const server = tls
    ? createHttpsServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handle)
    : createServer(handle);
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}/hook`,
    requests,
    failures: () => failures,
    /** Every event received so far, flattened. */
    events: () => requests.flatMap((r) => JSON.parse(r.rawBody).events),
    close: () => new Promise((ok) => server.close(ok)),
  };
}
