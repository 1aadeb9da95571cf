// Private and encrypted channels, forged authorizations, client events.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import PusherServer from 'pusher';

import {
  APP, collect, connected, nativeSubscriber, once, rawPusher, sleep, startServer, subscribed, uniq,
  until,
} from './harness.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

test('a private channel subscribes with an authorization signed by the SDK', async () => {
  const client = server.client();
  const name = uniq('private-orders');
  const [ch] = await subscribed(client, name);
  const got = collect(ch, 'created');
  await server.sdk().trigger(name, 'created', { id: 7 });
  await until(() => got.length === 1, 'the event');
  assert.deepEqual(got[0].data, { id: 7 });
  client.disconnect();
});

test('a forged authorization is refused with pusher:subscription_error and nothing is delivered', async () => {
  const forger = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-the-secret', host: '127.0.0.1', port: String(server.port) });
  const client = server.client({ authorize: (socketId, channel) => forger.authorizeChannel(socketId, channel) });
  const name = uniq('private-secret');
  const ch = client.subscribe(name);
  const error = await once(ch, 'pusher:subscription_error');
  assert.equal(error.status, 401);
  assert.equal(error.type, 'AuthError');
  const got = collect(ch, 'ev');
  await server.sdk().trigger(name, 'ev', { leaked: true });
  await sleep(200);
  assert.equal(got.length, 0);
  const info = await server.sdk().get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
  assert.deepEqual(await info.json(), { occupied: false, subscription_count: 0 });
  client.disconnect();
});

test('an authorization for another socket or channel, or none at all, is refused', async () => {
  const sdk = server.sdk();
  const raw = await rawPusher(server, '/app/app-key?protocol=7');
  await until(() => raw.frames.length, 'established');
  const socketId = JSON.parse(raw.frames[0].data).socket_id;
  const name = uniq('private-x');
  const cases = [
    sdk.authorizeChannel('1.1', name).auth, // another socket
    sdk.authorizeChannel(socketId, `${name}-other`).auth, // another channel
    `other-key:${sdk.authorizeChannel(socketId, name).auth.split(':')[1]}`, // another key
    '', // none
  ];
  for (const auth of cases) {
    raw.frames.length = 0;
    raw.send({ event: 'pusher:subscribe', data: { channel: name, auth } });
    await until(() => raw.frames.find((f) => f.event === 'pusher:subscription_error'), `error for ${auth}`);
    assert.ok(!raw.frames.some((f) => f.event === 'pusher_internal:subscription_succeeded'));
  }
  // The right one works on the same socket.
  raw.send({ event: 'pusher:subscribe', data: { channel: name, auth: sdk.authorizeChannel(socketId, name).auth } });
  await until(() => raw.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded' && f.channel === name), 'success');
  raw.close();
});

test('client events reach the others on a private channel, not the sender', async () => {
  const a = server.client();
  const b = server.client();
  const name = uniq('private-chat');
  const [chA] = await subscribed(a, name);
  const [chB] = await subscribed(b, name);
  const gotA = collect(chA, 'client-typing');
  const gotB = collect(chB, 'client-typing');
  assert.equal(chA.trigger('client-typing', { who: 'a' }), true);
  await until(() => gotB.length === 1, 'b gets it');
  assert.deepEqual(gotB[0].data, { who: 'a' });
  await sleep(200);
  assert.equal(gotA.length, 0, 'not echoed to the sender');
  a.disconnect();
  b.disconnect();
});

test('client events are refused on public channels, with names over 200 characters, and past the rate limit with 4301 (the connection goes on)', async () => {
  const raw = await rawPusher(server, '/app/app-key?protocol=7');
  await until(() => raw.frames.length, 'established');
  const socketId = JSON.parse(raw.frames[0].data).socket_id;
  const pub = uniq('public');
  raw.send({ event: 'pusher:subscribe', data: { channel: pub } });
  await until(() => raw.frames.find((f) => f.channel === pub), 'public subscribed');
  raw.frames.length = 0;
  raw.send({ event: 'client-x', channel: pub, data: {} });
  await until(() => raw.frames.find((f) => f.event === 'pusher:error'), 'error on a public channel');

  const priv = uniq('private-rate');
  const listener = server.client();
  const [ch] = await subscribed(listener, priv);
  const got = collect(ch, 'client-n');
  raw.send({ event: 'pusher:subscribe', data: { channel: priv, auth: server.sdk().authorizeChannel(socketId, priv).auth } });
  await until(() => raw.frames.find((f) => f.channel === priv), 'private subscribed');
  raw.frames.length = 0;
  raw.send({ event: `client-${'x'.repeat(200)}`, channel: priv, data: {} });
  await until(() => raw.frames.find((f) => f.event === 'pusher:error'), 'error for a 207-character event name');
  raw.frames.length = 0;
  // 60 at once: the app allows 20 per second, so even if they straddle two one-second windows
  // at most 40 pass and the rest are refused.
  for (let i = 0; i < 60; i++) raw.send({ event: 'client-n', channel: priv, data: { i } });
  await until(() => raw.frames.find((f) => f.event === 'pusher:error' && f.data.code === 4301), 'rate limited (4301)');
  await sleep(300);
  assert.ok(got.length >= 20 && got.length <= 40, `${got.length} delivered`);
  const refused = raw.frames.filter((f) => f.event === 'pusher:error' && f.data.code === 4301).length;
  assert.equal(got.length + refused, 60, 'each event either delivered or refused');
  assert.equal(raw.closed(), null, 'the connection goes on');
  listener.disconnect();
  raw.close();
});

test('encrypted channels pass ciphertext through: pusher-js decrypts, the server never sees plaintext', async () => {
  const masterKey = randomBytes(32).toString('base64');
  const sdk = new PusherServer({
    appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(server.port),
    encryptionMasterKeyBase64: masterKey,
  });
  const client = server.client({ authorize: (socketId, channel) => sdk.authorizeChannel(socketId, channel) });
  const name = uniq('private-encrypted-vault');
  const [ch] = await subscribed(client, name);
  const got = collect(ch, 'secret');
  const native = await nativeSubscriber(server, name);
  await sdk.trigger(name, 'secret', { pin: '1234' });
  await until(() => got.length === 1, 'decrypted event');
  assert.deepEqual(got[0].data, { pin: '1234' });
  await until(() => native.frames.some((f) => f.type === 'message'), 'native sees it too');
  const seen = JSON.stringify(native.frames.find((f) => f.type === 'message'));
  assert.ok(!seen.includes('1234'), `plaintext must not pass through the server: ${seen}`);
  assert.match(seen, /ciphertext/);
  native.close();
  client.disconnect();
});

test('cache channels replay the last event to a new subscriber, or send pusher:cache_miss', async () => {
  const name = uniq('cache-price');
  const first = server.client();
  const chFirst = first.subscribe(name);
  const miss = await once(chFirst, 'pusher:cache_miss');
  assert.ok(miss !== undefined);
  await server.sdk().trigger(name, 'tick', { price: 1 });
  await server.sdk().trigger(name, 'tick', { price: 2 });

  const late = server.client();
  const chLate = late.subscribe(name);
  const got = collect(chLate, 'tick');
  const misses = collect(chLate, 'pusher:cache_miss');
  await until(() => got.length === 1, 'the last event replayed');
  assert.deepEqual(got[0].data, { price: 2 });
  await sleep(200);
  assert.equal(got.length, 1, 'only the last one');
  assert.equal(misses.length, 0);
  first.disconnect();
  late.disconnect();
});

test('a private cache channel needs its authorization too', async () => {
  const name = uniq('private-cache-state');
  await server.sdk().trigger(name, 'state', { v: 9 });
  const client = server.client();
  const ch = client.subscribe(name);
  const got = collect(ch, 'state');
  await until(() => got.length === 1, 'replayed');
  assert.deepEqual(got[0].data, { v: 9 });
  client.disconnect();
  await connected(server.client()); // the server is still fine
});
