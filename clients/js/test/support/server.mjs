// The real server for the SDK's Node and browser tests: the debug binary on a free port
// (through the repository's tests/switchboard-process.mjs), tokens minted here, and the
// server API for publishing. Node built-ins only.
import { createHmac } from 'node:crypto';

import { startSwitchboard, uniq } from '../../../../tests/switchboard-process.mjs';

export { uniq };

// 32 bytes at least: the server refuses a shorter HMAC secret.
export const TOKEN_SECRET = 'sdk-secret-0123456789abcdef-0123456789';
export const API_KEY = 'sdk-key';

const b64url = (value) => Buffer.from(value).toString('base64url');

/** An HS256 connection token for `user` that may do anything, valid for `ttl` seconds. */
export function mintToken(user, { ttl = 3600, extra = {} } = {}) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = {
    sub: user,
    exp: Math.floor(Date.now() / 1000) + ttl,
    subscribe: ['*'],
    publish: ['*'],
    rooms: ['*'],
    ...extra,
  };
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', TOKEN_SECRET).update(`${head}.${body}`).digest();
  return `${head}.${body}.${b64url(sig)}`;
}

/**
 * Starts the server. `origins`: browser origins allowed (CORS and WebSocket). The `sdk`
 * namespace keeps 5,000 messages, so the fault tests' hundreds of messages stay recoverable.
 */
export async function startServer({ origins = [], extraToml = '' } = {}) {
  const server = await startSwitchboard({
    tmpPrefix: 'switchboard-sdk-',
    configFor: (port) =>
      [
        `listen = "127.0.0.1:${port}"`,
        '',
        '[auth]',
        `token_secret = "${TOKEN_SECRET}"`,
        `api_key = "${API_KEY}"`,
        origins.length ? `allowed_origins = [${origins.map((o) => JSON.stringify(o)).join(', ')}]` : '',
        '',
        '[[namespace]]',
        'name = "sdk"',
        'history_size = 5000',
        'history_ttl = "10m"',
        'presence = true',
        'join_leave = true',
        '',
        extraToml,
      ].join('\n') + '\n',
  });
  return {
    ...server,
    token: mintToken,
    async api(method, path, body) {
      const res = await fetch(`${server.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${path} -> HTTP ${res.status}: ${text}`);
      return JSON.parse(text);
    },
    publish(channel, data) {
      return this.api('POST', '/api/publish', { channel, data });
    },
  };
}
