// pusher-js's HTTP fallback transports (for networks that block WebSocket): xhr_streaming and
// xhr_polling, with the same channels, events and presence as over WebSocket.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  collect, connected, nativeSubscriber, sleep, startServer, subscribed, uniq, until,
} from './harness.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  test(`${transport}: connect, subscribe, receive triggers and client events, leave`, async () => {
    const client = server.client({ transports: [transport], presence: { user_id: `u-${transport}` } });
    const socketId = await connected(client);
    assert.match(socketId, /^\d+\.\d+$/);
    assert.equal(client.connection.state, 'connected');

    const name = uniq('presence-fallback');
    const [ch, members] = await subscribed(client, name);
    assert.equal(members.count, 1);
    const got = collect(ch, 'ev');
    await server.sdk().trigger(name, 'ev', { n: 1 });
    await server.sdk().trigger(name, 'ev', { n: 2 });
    await until(() => got.length === 2, 'both events');
    assert.deepEqual(got.map((g) => g.data), [{ n: 1 }, { n: 2 }]);

    // A WebSocket peer sees its members and client events, and vice versa.
    const peer = server.client({ presence: { user_id: 'peer' } });
    const [peerCh] = await subscribed(peer, name);
    const fromFallback = collect(peerCh, 'client-hi');
    const fromPeer = collect(ch, 'client-hi');
    await until(() => ch.members.count === 2, 'member_added over the fallback');
    ch.trigger('client-hi', { from: transport });
    peerCh.trigger('client-hi', { from: 'ws' });
    await until(() => fromFallback.length === 1 && fromPeer.length === 1, 'client events both ways');
    assert.deepEqual(fromFallback[0].data, { from: transport });
    assert.equal(fromFallback[0].meta.user_id, `u-${transport}`);

    // Native clients are on the same channel.
    const native = await nativeSubscriber(server, name);
    await server.sdk().trigger(name, 'ev', { n: 3 });
    await until(() => got.length === 3 && native.frames.some((f) => f.type === 'message'), 'third event');
    native.close();

    client.disconnect();
    await until(() => peerCh.members.count === 1, 'the fallback client left', 40_000);
    peer.disconnect();
  });
}

test('xhr_streaming past pusher-js buffer limit: the stream is reopened on the same session, nothing lost', async () => {
  const client = server.client({ transports: ['xhr_streaming'] });
  await connected(client);
  const name = uniq('busy');
  const [ch] = await subscribed(client, name);
  const got = collect(ch, 'n');
  const sdk = server.sdk();
  const socketId = client.connection.socket_id;
  // 160 events of ~5 KB: more than twice the 256 KiB after which pusher-js reopens its stream.
  const pad = 'x'.repeat(3000) + 'é😀'.repeat(300); // not only ASCII: counted as pusher-js counts
  for (let i = 0; i < 160; i++) await sdk.trigger(name, 'n', { i, pad });
  await until(() => got.length === 160, 'all 160 events', 15_000).catch((e) => {
    throw new Error(`${e.message}: got ${got.length}, state ${client.connection.state}, socket ${client.connection.socket_id} (was ${socketId})`);
  });
  assert.deepEqual(got.map((g) => g.data.i), Array.from({ length: 160 }, (_, i) => i));
  assert.ok(got.every((g) => g.data.pad === pad));
  assert.equal(client.connection.socket_id, socketId, 'the same connection throughout');
  await sleep(200);
  assert.equal(client.connection.state, 'connected');
  client.disconnect();
});

for (const transport of ['xhr_streaming', 'xhr_polling']) {
  test(`${transport}: sign-in, sendToUser and terminate_connections (4009, no reconnect)`, async () => {
    const user = uniq('user');
    const client = server.client({ transports: [transport], user: { id: user } });
    client.signin();
    await connected(client);
    await client.user.signinDonePromise;
    const got = [];
    client.user.bind('note', (data) => got.push(data));
    await until(() => client.user.serverToUserChannel?.subscribed, 'user channel subscribed');
    await server.sdk().sendToUser(user, 'note', { hi: 1 });
    await until(() => got.length === 1, 'sendToUser over the fallback');
    const errors = [];
    client.connection.bind('error', (e) => errors.push(e));
    await server.sdk().terminateUserConnections(user);
    await until(() => client.connection.state !== 'connected', 'closed by the server');
    await sleep(1500);
    assert.notEqual(client.connection.state, 'connected', 'no reconnect after 4009');
    assert.ok(errors.some((e) => JSON.stringify(e).includes('4009')), JSON.stringify(errors));
    client.disconnect();
  });
}
