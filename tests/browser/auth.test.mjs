// Refusals as a page sees them: a bad, forged or expired token on a one-way door is HTTP 401
// with a JSON error body the page can read (so the CORS headers are on errors too), and a page
// from an origin the server does not allow cannot read the doors at all.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  mintToken, setup, uniq, withDiagnostics,
} from './harness.mjs';

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

const DOORS = ['sse', 'stream', 'poll'];

const badTokens = () => [
  { what: 'signed with another secret', token: mintToken(uniq('forger'), { secret: 'not-the-secret' }), code: 'unauthorized' },
  { what: 'not a JWT at all', token: 'not-a-jwt', code: 'unauthorized' },
  { what: 'expired', token: mintToken(uniq('late'), { ttl: -120 }), code: 'token_expired' },
];

test('a bad token on /sse, /stream and /poll is HTTP 401 with a JSON error the page can read', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page } = env;
    const failures = [];
    for (const door of DOORS) {
      for (const { what, token, code } of badTokens()) {
        const url = `${sb.url}/${door}?channel=${uniq('auth')}&token=${encodeURIComponent(token)}`;
        const got = await page.evaluate((u) => window.sb.tryFetch(u, { signal: AbortSignal.timeout(5000) }), url);
        const label = `/${door} with a token ${what}`;
        if (got.error) {
          failures.push(`${label}: the page could not read the answer (${got.error}); a missing CORS header on the error?`);
          continue;
        }
        let body = null;
        try { body = JSON.parse(got.body); } catch { /* reported below */ }
        if (got.status !== 401) failures.push(`${label}: HTTP ${got.status}, expected 401; body ${got.body.slice(0, 200)}`);
        else if (!/^application\/json/.test(got.contentType || '')) failures.push(`${label}: content-type ${got.contentType}, expected JSON`);
        else if (body?.error?.code !== code) failures.push(`${label}: body ${got.body.slice(0, 200)}, expected {"error":{"code":"${code}",...}}`);
        else if (typeof body.error.message !== 'string') failures.push(`${label}: the error has no message: ${got.body}`);
      }
    }
    assert.deepEqual(failures, [], failures.join('\n'));
  }));

test('a page from an origin not in allowed_origins cannot read the doors', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, context, pages } = env;
    // Same page server, other origin: `localhost` instead of `127.0.0.1`.
    const other = await context.newPage();
    try {
      await other.goto(`http://localhost:${pages.port}/`, { timeout: 10_000 });
      assert.equal(await other.evaluate(() => location.origin), `http://localhost:${pages.port}`);
      const url = `${sb.url}/poll?channel=${uniq('cors')}&token=${sb.token(uniq('cors-user'))}&timeout=1`;
      const got = await other.evaluate((u) => window.sb.tryFetch(u, { signal: AbortSignal.timeout(5000) }), url);
      assert.ok(got.error && /TypeError/.test(got.error), `the other origin's fetch must be refused by CORS, got ${JSON.stringify(got).slice(0, 300)}`);
      // The allowed origin reads the same thing fine.
      const ok = await env.page.evaluate((u) => window.sb.tryFetch(u, { signal: AbortSignal.timeout(5000) }), url);
      assert.equal(ok.status, 200, `the allowed origin reads /poll: ${JSON.stringify(ok).slice(0, 300)}`);
    } finally {
      await other.close();
    }
  }));
