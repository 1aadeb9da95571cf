// The HTTP API through the official server SDK: batch triggers, channel queries, request
// signing and limits; user sign-in, sendToUser and terminate_connections.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';

import PusherServer from 'pusher';

import {
  APP, collect, connected, once, rawPusher, sleep, startServer, subscribed, uniq, until,
} from './harness.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

test('triggerBatch delivers every event of the batch, with info when asked', async () => {
  const client = server.client();
  const a = uniq('batch-a');
  const b = uniq('batch-b');
  const [chA] = await subscribed(client, a);
  const [chB] = await subscribed(client, b);
  const gotA = collect(chA, 'e1');
  const gotB = collect(chB, 'e2');
  const res = await server.sdk().triggerBatch([
    { channel: a, name: 'e1', data: { n: 1 } },
    { channel: b, name: 'e2', data: 'plain text', info: 'subscription_count' },
  ]);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { batch: [{}, { subscription_count: 1 }] });
  await until(() => gotA.length === 1 && gotB.length === 1, 'both events');
  assert.deepEqual(gotA[0].data, { n: 1 });
  assert.equal(gotB[0].data, 'plain text');
  client.disconnect();
});

test('trigger with info answers subscription_count per channel', async () => {
  const client = server.client();
  const name = uniq('info');
  await subscribed(client, name);
  const res = await server.sdk().trigger([name, uniq('empty')], 'ev', {}, { info: 'subscription_count' });
  const body = await res.json();
  assert.equal(body.channels[name].subscription_count, 1);
  client.disconnect();
});

test('channel queries: occupied channels, filter_by_prefix, one channel', async () => {
  const client = server.client();
  const tag = uniq('q');
  const names = [`${tag}-one`, `${tag}-two`, `private-${tag}`];
  for (const n of names) await subscribed(client, n);
  const sdk = server.sdk();
  const all = await (await sdk.get({ path: '/channels' })).json();
  for (const n of names) assert.ok(n in all.channels, `${n} listed`);
  const filtered = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: `private-${tag}` } })).json();
  assert.deepEqual(filtered, { channels: { [`private-${tag}`]: {} } });
  const one = await (await sdk.get({ path: `/channels/${names[0]}`, params: { info: 'subscription_count' } })).json();
  assert.deepEqual(one, { occupied: true, subscription_count: 1 });
  const none = await (await sdk.get({ path: `/channels/${uniq('nobody')}` })).json();
  assert.deepEqual(none, { occupied: false });
  client.disconnect();
});

test('a request signed with the wrong secret, or altered, or stale is refused with 401', async () => {
  const bad = new PusherServer({ appId: APP.id, key: APP.key, secret: 'wrong', host: '127.0.0.1', port: String(server.port) });
  await assert.rejects(bad.trigger('x', 'ev', {}), (e) => e.status === 401);
  await assert.rejects(bad.get({ path: '/channels' }), (e) => e.status === 401);
  const wrongKey = new PusherServer({ appId: APP.id, key: 'other', secret: APP.secret, host: '127.0.0.1', port: String(server.port) });
  await assert.rejects(wrongKey.trigger('x', 'ev', {}), (e) => e.status === 401);

  // Signed by hand: a valid signature, then the same request with its body changed, then a
  // timestamp 11 minutes old.
  const send = async ({ body, timestamp = Math.floor(Date.now() / 1000), tamper = false }) => {
    const path = `/apps/${APP.id}/events`;
    const md5 = createHash('md5').update(body).digest('hex');
    const query = `auth_key=${APP.key}&auth_timestamp=${timestamp}&auth_version=1.0&body_md5=${md5}`;
    const sig = createHmac('sha256', APP.secret).update(`POST\n${path}\n${query}`).digest('hex');
    const sent = tamper ? body.replace('"ev"', '"evil"') : body;
    return fetch(`${server.url}${path}?${query}&auth_signature=${sig}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: sent,
    });
  };
  const body = JSON.stringify({ name: 'ev', channels: ['signed'], data: '{}' });
  assert.equal((await send({ body })).status, 200);
  assert.equal((await send({ body, tamper: true })).status, 401);
  assert.equal((await send({ body, timestamp: Math.floor(Date.now() / 1000) - 660 })).status, 401);
  assert.equal((await fetch(`${server.url}/apps/${APP.id}/channels`)).status, 401, 'unsigned');
});

test('limits: data over 10 KB is 413, over 100 channels or a bad name is 400, an unknown app 404', async () => {
  const sdk = server.sdk();
  await assert.rejects(sdk.trigger('big', 'ev', 'x'.repeat(10 * 1024 + 1)), (e) => e.status === 413);
  const many = Array.from({ length: 101 }, (_, i) => `c${i}`);
  // The SDK itself refuses more than 100 channels and bad names; post() sends them anyway.
  await assert.rejects(sdk.post({ path: '/events', body: { name: 'ev', channels: many, data: '{}' } }), (e) => e.status === 400);
  await assert.rejects(sdk.post({ path: '/events', body: { name: 'ev', channels: ['bad:name'], data: '{}' } }), (e) => e.status === 400);
  const other = new PusherServer({ appId: 'nope', key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(server.port) });
  await assert.rejects(other.trigger('x', 'ev', {}), (e) => e.status === 404);
  const batch = Array.from({ length: 11 }, () => ({ channel: 'x', name: 'ev', data: '{}' }));
  await assert.rejects(sdk.triggerBatch(batch), (e) => e.status === 400);
});

test('user sign-in, then sendToUser reaches every connection of that user and no one else', async () => {
  const alice1 = server.client({ user: { id: 'alice', name: 'Alice' } });
  const alice2 = server.client({ user: { id: 'alice' } });
  const bob = server.client({ user: { id: 'bob' } });
  const got = { a1: [], a2: [], bob: [] };
  for (const [key, client] of [['a1', alice1], ['a2', alice2], ['bob', bob]]) {
    client.signin();
    client.user.bind('notice', (data) => got[key].push(data));
    await connected(client);
    await client.user.signinDonePromise;
  }
  // Each signed-in pusher-js subscribes to #server-to-user-<id>; wait until they are in.
  await until(async () => {
    const res = await server.sdk().get({ path: '/channels' });
    return Object.keys((await res.json()).channels).length >= 0 && alice1.user.serverToUserChannel?.subscribed
      && alice2.user.serverToUserChannel?.subscribed && bob.user.serverToUserChannel?.subscribed;
  }, 'user channels subscribed');
  await server.sdk().sendToUser('alice', 'notice', { text: 'for alice' });
  await until(() => got.a1.length === 1 && got.a2.length === 1, 'both of alice connections');
  assert.deepEqual(got.a1[0], { text: 'for alice' });
  await sleep(200);
  assert.equal(got.bob.length, 0);
  for (const c of [alice1, alice2, bob]) c.disconnect();
});

test('a forged sign-in gets pusher:error and no user channel', async () => {
  const forger = new PusherServer({ appId: APP.id, key: APP.key, secret: 'wrong', host: '127.0.0.1', port: String(server.port) });
  const client = server.client({ authenticate: (socketId) => forger.authenticateUser(socketId, { id: 'mallory' }) });
  await connected(client);
  const errors = [];
  client.connection.bind('error', (e) => errors.push(e));
  client.signin();
  await until(() => errors.some((e) => e?.data?.code === 4009 || e?.error?.data?.code === 4009), 'pusher:error 4009');
  assert.equal(client.user.user_data, null);
  client.disconnect();

  // Subscribing to someone's user channel without signing in as them is refused (pusher-js
  // would not even try: a raw socket does).
  const raw = await rawPusher(server, '/app/app-key?protocol=7');
  raw.send({ event: 'pusher:subscribe', data: { channel: '#server-to-user-alice' } });
  const error = await until(() => raw.frames.find((f) => f.event === 'pusher:subscription_error'), 'refused');
  assert.equal(error.data.status, 403);
  raw.close();
});

test('terminate_connections closes every connection of the user with 4009, and only theirs', async () => {
  const victim = server.client({ user: { id: 'victim' } });
  const other = server.client({ user: { id: 'other' } });
  for (const c of [victim, other]) {
    c.signin();
    await connected(c);
    await c.user.signinDonePromise;
  }
  const closes = [];
  victim.connection.bind('error', (e) => closes.push(e));
  const stateChange = once(victim.connection, 'state_change');
  const res = await server.sdk().terminateUserConnections('victim');
  assert.equal(res.status, 200);
  await stateChange;
  await until(() => victim.connection.state !== 'connected', 'victim disconnected');
  await sleep(300);
  assert.notEqual(victim.connection.state, 'connected', 'pusher-js does not reconnect after 4009');
  assert.equal(other.connection.state, 'connected');
  victim.disconnect();
  other.disconnect();
});
