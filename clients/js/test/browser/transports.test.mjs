// Chromium against the real server: the SDK with every transport forced one at a time (every
// call of the contract works on each), and behind a proxy that refuses WebSocket upgrades (it
// must end on SSE by itself and still publish, read presence and history, through the session).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startProxy } from '../support/proxy.mjs';
import { uniq } from '../support/server.mjs';
import { setup, snapshot, waitIn, withDiagnostics } from './harness.mjs';

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

/** Everything CLIENT-SDK.md names, on one client `a` (and `b` for the room), as they are. */
async function exerciseContract(page, { url, transport, tokenA, tokenB, userA, channel, room }) {
  // Subscribed, then a message from this client and one from the backend.
  await waitIn(page, (c) => T.snapshot('a').subscribed.some((s) => s.channel === c), channel, { what: 'subscribed' });
  const published = await page.evaluate((c) => T.run(() => T.client('a').subscriptions.get(c).publish({ text: 'hi' })), channel);
  assert.ok(published.ok, JSON.stringify(published));
  assert.equal(published.value.offset, 1);
  const api = await env.sb.publish(channel, { text: 'from the backend' });
  assert.equal(api.offset, 2);
  let st = await waitIn(page, () => T.snapshot('a').messages.length >= 2 && T.snapshot('a'), null, { what: 'both messages' });
  assert.deepEqual(st.messages, [
    { channel, data: { text: 'hi' }, offset: 1, epoch: api.epoch },
    { channel, data: { text: 'from the backend' }, offset: 2, epoch: api.epoch },
  ]);
  assert.equal(st.transport, transport);

  const answers = await page.evaluate(async (c) => {
    const sub = T.client('a').subscriptions.get(c);
    return {
      presence: await T.run(() => sub.presence()),
      history: await T.run(() => sub.history({ limit: 1 })),
      viaClient: await T.run(() => T.client('a').publish(c, { text: 'via sb.publish' })),
      refused: await T.run(() => T.client('a').subscribe(`x#nobody-${c}`).presence()),
    };
  }, channel);
  assert.deepEqual(answers.presence.value.map((m) => m.user), [userA]);
  assert.deepEqual(answers.history.value, { messages: [st.messages[1]], offset: 2, epoch: api.epoch });
  assert.equal(answers.viaClient.value.offset, 3);
  assert.equal(answers.refused.error.code, 'forbidden', `an error frame rejects with {code, message}: ${JSON.stringify(answers.refused)}`);
  assert.ok(answers.refused.error.message && answers.refused.error.isError);
  st = await waitIn(page, () => T.snapshot('a').joins.length >= 1 && T.snapshot('a'), null, { what: 'own join' });
  assert.equal(st.joins[0].user, userA, 'join pushes reach the subscription');

  // A room: b joins after a, they signal, b updates its meta, b leaves.
  const result = await page.evaluate(async ({ url, transport, tokenB, room }) => {
    T.start('b', url, { token: tokenB, transports: [transport] });
    const a = await T.client('a').joinRoom(room, { meta: { name: 'A' } });
    const seen = { a: [], b: [] };
    a.on('peer_joined', (p) => seen.a.push(`joined ${p.peer} ${p.meta.name}`));
    a.on('peer_updated', (p) => seen.a.push(`updated ${p.meta.name}`));
    a.on('peer_left', (id) => seen.a.push(`left ${id}`));
    a.on('signal', (s) => seen.a.push(`signal from ${s.from}: ${JSON.stringify(s.data)}`));
    const b = await T.client('b').joinRoom(room, { meta: { name: 'B' } });
    b.on('signal', (s) => seen.b.push(`signal from ${s.from}: ${JSON.stringify(s.data)}`));
    const wait = (pred) => new Promise((resolve, reject) => {
      const t0 = Date.now();
      const tick = () => (pred() ? resolve() : Date.now() - t0 > 5000 ? reject(new Error('timeout')) : setTimeout(tick, 20));
      tick();
    });
    await wait(() => seen.a.length >= 1);
    await a.signal({ hello: 'b' }, b.peer);
    await b.signal({ hello: 'everyone' });
    await wait(() => seen.b.length >= 1 && seen.a.length >= 2);
    await b.updateMeta({ name: 'B2' });
    await wait(() => seen.a.length >= 3);
    const bPeer = b.peer;
    await b.leave();
    await wait(() => seen.a.length >= 4);
    const twice = await T.run(() => T.client('a').joinRoom(room));
    return { seen, aPeer: a.peer, bPeer, bPeersAtJoin: a.peers.length, ice: Array.isArray(a.iceServers), twice: twice.error };
  }, { url, transport, tokenB, room });
  assert.deepEqual(result.seen.a, [
    `joined ${result.bPeer} B`,
    `signal from ${result.bPeer}: {"hello":"everyone"}`,
    'updated B2',
    `left ${result.bPeer}`,
  ]);
  assert.deepEqual(result.seen.b, [`signal from ${result.aPeer}: {"hello":"b"}`]);
  assert.equal(result.bPeersAtJoin, 0, 'the roster is true after b left');
  assert.ok(result.ice);
  assert.equal(result.twice.code, 'bad_request');
}

for (const transport of ['websocket', 'sse', 'http-stream', 'long-poll']) {
  test(`${transport} forced: subscribe, publish, presence, history, errors and rooms work`, { timeout: 30_000 }, async () => {
    const page = await env.page(transport);
    await withDiagnostics(env, async () => {
      const userA = uniq('a');
      const args = {
        url: env.sb.url,
        transport,
        userA,
        tokenA: env.sb.token(userA),
        tokenB: env.sb.token(uniq('b')),
        channel: `sdk:${uniq(transport)}`,
        room: uniq('room'),
      };
      await page.evaluate(({ url, tokenA, transport, channel }) => T.start('a', url, { token: tokenA, transports: [transport] }, [channel]), args);
      await exerciseContract(page, args);
      const st = await snapshot(page, 'a');
      assert.deepEqual(st.transports, [transport], 'connected once, with the forced transport');
    }, async () => `--- client log ---\n${(await snapshot(page, 'a').catch(() => ({ logs: [] }))).logs.slice(-30).join('\n')}`);
    await page.context().close();
  });
}

test('a proxy that refuses WebSocket upgrades: the SDK ends on SSE by itself and everything works through the session', { timeout: 30_000 }, async () => {
  const proxy = await startProxy({ targetPort: env.sb.port, refuseWebSocket: true });
  const page = await env.page('proxy');
  try {
    await withDiagnostics(env, async () => {
      const userA = uniq('a');
      const args = {
        url: proxy.url,
        transport: 'sse',
        userA,
        tokenA: env.sb.token(userA),
        tokenB: env.sb.token(uniq('b')),
        channel: `sdk:${uniq('proxy')}`,
        room: uniq('room'),
      };
      // The default transports: websocket first.
      await page.evaluate(({ url, tokenA, channel }) => T.start('a', url, { token: tokenA }, [channel]), args);
      const st = await waitIn(page, () => T.snapshot('a').state === 'connected' && T.snapshot('a'), null, { what: 'connected' });
      assert.equal(st.transport, 'sse', 'settled on SSE');
      assert.ok(proxy.stats.refusedUpgrades >= 1, 'the WebSocket upgrade was tried and refused');
      const took = st.states.find((s) => s.s === 'connected').t - st.states[0].t;
      assert.ok(took < 3000, `moved on within a few seconds (${took} ms)`);
      console.log(`# refused WebSocket -> connected on SSE in ${took} ms`);
      // b also goes through the proxy, forced to SSE.
      await exerciseContract(page, args);
    }, async () => `--- client log ---\n${(await snapshot(page, 'a')).logs.slice(-30).join('\n')}`);
  } finally {
    await page.context().close();
    await proxy.close();
  }
});
