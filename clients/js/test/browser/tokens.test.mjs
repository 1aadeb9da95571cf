// Tokens that expire every few seconds, with getToken, on every transport at once: the
// connection's token is refreshed before exp (`refresh`), so the subscription never stops
// (one subscribe, no reconnect) while messages keep flowing. And a client whose first token
// is already expired fetches a fresh one before connecting.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { uniq } from '../support/server.mjs';
import { deliveryFigures, setup, snapshot, waitIn, withDiagnostics } from './harness.mjs';

const TTL = 3; // seconds
const RUN_MS = 10_000;
const TRANSPORTS = ['websocket', 'sse', 'http-stream', 'long-poll'];

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

test(`a token expiring every ${TTL} s with getToken: the subscription never stops, on every transport`, { timeout: 40_000 }, async () => {
  const page = await env.page('tokens');
  await withDiagnostics(env, async () => {
    const channel = `sdk:${uniq('tok')}`;
    for (const transport of TRANSPORTS) {
      const user = uniq(transport);
      await page.evaluate(({ url, token, transport, channel, user, ttl }) => T.start(transport, url, {
        token, transports: [transport], getTokenFor: { user, ttl },
      }, [channel]), { url: env.sb.url, token: env.sb.token(user, { ttl: TTL }), transport, channel, user, ttl: TTL });
    }
    for (const transport of TRANSPORTS) {
      await waitIn(page, (k) => T.snapshot(k).subscribed.length === 1, transport, { what: `${transport} subscribed` });
    }
    // Publish steadily for longer than three token lifetimes.
    let sent = 0;
    const started = Date.now();
    while (Date.now() - started < RUN_MS) {
      await env.sb.publish(channel, { n: ++sent });
      await sleep(100);
    }
    for (const transport of TRANSPORTS) {
      await waitIn(page, ({ k, n }) => T.snapshot(k).messages.length >= n, { k: transport, n: sent }, { what: `${transport}: all ${sent} messages` });
    }
    for (const transport of TRANSPORTS) {
      const st = await snapshot(page, transport);
      const f = deliveryFigures(st, sent);
      console.log(`# ${transport}: ${f.received}/${sent} messages, ${st.tokens} tokens fetched, ${st.transports.length} connection(s)`);
      assert.deepEqual({ lost: f.lost, repeated: f.repeated, inOrder: f.inOrder }, { lost: 0, repeated: 0, inOrder: true }, transport);
      assert.ok(st.tokens >= Math.floor(RUN_MS / 1000 / TTL), `${transport}: getToken was called to refresh (${st.tokens} times)`);
      assert.equal(st.transports.length, 1, `${transport}: never reconnected (states: ${JSON.stringify(st.states.map((s) => s.s))})`);
      assert.equal(st.subscribed.length, 1, `${transport}: subscribed once, never interrupted`);
      assert.ok(st.logs.some((l) => /token refreshed/.test(l)), `${transport}: the refresh command was answered`);
      assert.deepEqual(st.clientErrors, [], transport);
    }
  }, async () => (await Promise.all(TRANSPORTS.map(async (t) => `--- ${t} ---\n${(await snapshot(page, t)).logs.slice(-15).join('\n')}`))).join('\n'));
  await page.context().close();
});

test('an expired first token is replaced through getToken before connecting', { timeout: 20_000 }, async () => {
  const page = await env.page('expired');
  await withDiagnostics(env, async () => {
    const user = uniq('late');
    await page.evaluate(({ url, token, user }) => T.start('x', url, { token, getTokenFor: { user, ttl: 60 } }), {
      url: env.sb.url, token: env.sb.token(user, { ttl: -10 }), user,
    });
    const st = await waitIn(page, () => T.snapshot('x').state === 'connected' && T.snapshot('x'), null, { what: 'connected' });
    assert.equal(st.tokens, 1);
    assert.equal(st.transport, 'websocket');
  });
  await page.context().close();
});

test('without getToken, a refused token stops the client with its code', { timeout: 20_000 }, async () => {
  const page = await env.page('refused');
  await withDiagnostics(env, async () => {
    // The upgrade's 401 is invisible to a page: the SDK learns the code on the next door.
    await page.evaluate(({ url }) => T.start('y', url, { token: 'not-a-jwt' }), { url: env.sb.url });
    const st = await waitIn(page, () => T.snapshot('y').state === 'disconnected' && T.snapshot('y'), null, { what: 'disconnected' });
    assert.equal(st.disconnected[0].code, 'unauthorized');
    assert.equal(st.disconnected[0].reconnect, false);
  });
  await page.context().close();
});
