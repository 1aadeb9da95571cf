// The SDK in Node 20 (which has no global WebSocket) against the real server: the `ws` package
// as the WebSocket option, subscribe/publish/presence/history, and a reconnect through a proxy
// that cuts every connection, with messages published while the client is away.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';

import { Switchboard } from '../../dist/index.js';
import { startProxy } from '../support/proxy.mjs';
import { startServer, uniq } from '../support/server.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

/** Resolves when `pred()` holds (polled), or fails after `ms` naming `what`. */
async function until(pred, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

test('Node with ws: subscribe, publish from the client and the backend, presence, history', { timeout: 20_000 }, async () => {
  const user = uniq('node');
  const sb = new Switchboard(server.url, { token: server.token(user), WebSocket });
  await sb.connect();
  assert.equal(sb.transport, 'websocket');
  const channel = `sdk:${uniq('chat')}`;
  const sub = sb.subscribe(channel);
  const got = [];
  sub.on('message', (m) => got.push(m));
  const subscribed = await new Promise((resolve) => sub.once('subscribed', resolve));
  assert.deepEqual(subscribed, { offset: 0, epoch: subscribed.epoch, recovered: false });

  const mine = await sub.publish({ text: 'from node' });
  assert.equal(mine.offset, 1);
  const theirs = await server.publish(channel, { text: 'from the backend' });
  assert.equal(theirs.offset, 2);
  await until(() => got.length === 2, 'two messages');
  assert.deepEqual(got, [
    { channel, data: { text: 'from node' }, offset: 1, epoch: mine.epoch },
    { channel, data: { text: 'from the backend' }, offset: 2, epoch: mine.epoch },
  ]);
  const members = await sub.presence();
  assert.deepEqual(members.map((m) => m.user), [user]);
  const history = await sub.history({ limit: 1 });
  assert.deepEqual(history, { messages: [got[1]], offset: 2, epoch: mine.epoch });
  // An error frame rejects the awaited call with {code, message}; a refused subscribe emits it.
  const personal = `x#${uniq('someone')}`;
  const denied = sb.subscribe(personal);
  const refused = new Promise((resolve) => denied.once('error', resolve));
  await assert.rejects(denied.presence(), (e) => e.code === 'forbidden' && /not allowed/.test(e.message));
  assert.equal((await refused).code, 'forbidden');
  assert.equal(sb.subscriptions.has(personal), false, 'a forbidden subscription is dropped');
  sb.disconnect();
  assert.equal(sb.state, 'disconnected');
});

test('Node without a WebSocket option moves on to SSE by itself', { timeout: 20_000 }, async () => {
  const sb = new Switchboard(server.url, { token: server.token(uniq('nows')) });
  await sb.connect();
  assert.equal(sb.transport, 'sse');
  const channel = `sdk:${uniq('c')}`;
  const sub = sb.subscribe(channel);
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  await new Promise((resolve) => sub.once('subscribed', resolve));
  await sb.publish(channel, 'x');
  await until(() => got.length === 1, 'the message over SSE');
  sb.disconnect();
});

for (const transport of ['websocket', 'sse', 'http-stream', 'long-poll']) {
  test(`Node, ${transport}: reconnects after every connection is cut and loses nothing`, { timeout: 30_000 }, async () => {
    const proxy = await startProxy({ targetPort: server.port });
    const sb = new Switchboard(proxy.url, { token: server.token(uniq('re')), WebSocket, transports: [transport], minReconnectDelay: 100, maxReconnectDelay: 500 });
    try {
      await sb.connect();
      const channel = `sdk:${uniq('re')}`;
      const sub = sb.subscribe(channel);
      const offsets = [];
      const subscribed = [];
      sub.on('message', (m) => offsets.push(m.offset));
      sub.on('subscribed', (s) => subscribed.push(s));
      await until(() => subscribed.length === 1, 'subscribed');
      for (let i = 0; i < 5; i++) await server.publish(channel, { i });
      await until(() => offsets.length === 5, 'the first 5 messages');

      proxy.cutAll();
      for (let i = 5; i < 15; i++) await server.publish(channel, { i }); // while it is away
      await until(() => subscribed.length === 2 && sb.state === 'connected', 'the reconnect', 10_000);
      for (let i = 15; i < 20; i++) await server.publish(channel, { i });
      await until(() => offsets.length >= 20, 'all 20 messages', 10_000);
      await sleep(200);
      assert.deepEqual(offsets, Array.from({ length: 20 }, (_, i) => i + 1), 'each offset once, in order');
      assert.equal(subscribed[1].recovered, true, 'the resubscribe recovered everything');
      assert.equal(sb.transport, transport);
    } finally {
      sb.disconnect();
      await proxy.close();
    }
  });
}
