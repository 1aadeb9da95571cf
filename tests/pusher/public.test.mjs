// Connecting, public channels and the bridge to the native protocol, with pusher-js and the
// official server SDK, unmodified.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  API_KEY, collect, connected, nativeSubscriber, rawPusher, sleep, startServer, subscribed,
  uniq, until,
} from './harness.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

test('pusher-js connects and gets a socket id', async () => {
  const client = server.client();
  const socketId = await connected(client);
  assert.match(socketId, /^\d+\.\d+$/);
  client.disconnect();
});

test('connection_established carries socket_id and activity_timeout; pusher:ping gets pusher:pong', async () => {
  const raw = await rawPusher(server, '/app/app-key?protocol=7&client=js&version=8.4.0');
  await until(() => raw.frames.length >= 1, 'connection_established');
  const [first] = raw.frames;
  assert.equal(first.event, 'pusher:connection_established');
  const data = JSON.parse(first.data);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.equal(data.activity_timeout, 120);
  raw.send({ event: 'pusher:ping', data: {} });
  await until(() => raw.frames.find((f) => f.event === 'pusher:pong'), 'pusher:pong');
  raw.close();
});

test('an unknown app key is closed with 4001, a missing or unsupported protocol with 4008/4007/4006', async () => {
  for (const [path, code] of [
    ['/app/nope?protocol=7', 4001],
    ['/app/app-key', 4008],
    ['/app/app-key?protocol=3', 4007],
    ['/app/app-key?protocol=seven', 4006],
  ]) {
    const raw = await rawPusher(server, path);
    const closed = await raw.closedPromise;
    assert.equal(closed.code, code, path);
    const error = raw.frames.find((f) => f.event === 'pusher:error');
    assert.equal(error?.data?.code, code, `${path}: pusher:error before the close`);
  }
});

test('the server SDK triggers to one channel and to several, pusher-js receives the data', async () => {
  const client = server.client();
  const a = uniq('news');
  const b = uniq('sport');
  const [chA] = await subscribed(client, a);
  const [chB] = await subscribed(client, b);
  const gotA = collect(chA, 'headline');
  const gotB = collect(chB, 'headline');
  const sdk = server.sdk();
  await sdk.trigger(a, 'headline', { title: 'one' });
  await sdk.trigger([a, b], 'headline', { title: 'two' });
  await until(() => gotA.length === 2 && gotB.length === 1, 'both events');
  assert.deepEqual(gotA.map((g) => g.data), [{ title: 'one' }, { title: 'two' }]);
  assert.deepEqual(gotB.map((g) => g.data), [{ title: 'two' }]);
  client.disconnect();
});

test('socket_id excludes that connection from a trigger', async () => {
  const sender = server.client();
  const other = server.client();
  const name = uniq('excl');
  const [chS] = await subscribed(sender, name);
  const [chO] = await subscribed(other, name);
  const gotS = collect(chS, 'ev');
  const gotO = collect(chO, 'ev');
  await server.sdk().trigger(name, 'ev', { n: 1 }, { socket_id: sender.connection.socket_id });
  await until(() => gotO.length === 1, 'the other connection gets it');
  await sleep(200);
  assert.equal(gotS.length, 0, 'the excluded connection does not');
  sender.disconnect();
  other.disconnect();
});

test('unsubscribe stops delivery', async () => {
  const client = server.client();
  const name = uniq('unsub');
  const [ch] = await subscribed(client, name);
  const got = collect(ch, 'ev');
  const sdk = server.sdk();
  await sdk.trigger(name, 'ev', { n: 1 });
  await until(() => got.length === 1, 'first event');
  client.unsubscribe(name);
  await until(async () => {
    const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
    return (await res.json()).occupied === false;
  }, 'the channel to empty');
  await sdk.trigger(name, 'ev', { n: 2 });
  await sleep(200);
  assert.equal(got.length, 1);
  client.disconnect();
});

test('a Pusher client and a native client on the same channel see the same messages', async () => {
  const name = uniq('bridge');
  const client = server.client();
  const [ch] = await subscribed(client, name);
  const events = collect(ch, 'ev');
  const natives = collect(ch, 'message');
  const native = await nativeSubscriber(server, name);

  // Pusher trigger → native subscriber gets the envelope.
  await server.sdk().trigger(name, 'ev', { from: 'sdk' });
  await until(() => native.frames.some((f) => f.type === 'message'), 'native message');
  const msg = native.frames.find((f) => f.type === 'message');
  assert.equal(msg.channel, name);
  assert.equal(msg.offset, 1);
  assert.deepEqual(msg.data, { event: 'ev', data: JSON.stringify({ from: 'sdk' }) });

  // Native server API publish → Pusher client gets a `message` event with the JSON.
  const res = await fetch(`${server.url}/api/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ channel: name, data: { from: 'native' } }),
  });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).offset, 2, 'one stream: offsets continue across protocols');
  await until(() => events.length === 1 && natives.length === 1, 'both at the Pusher client');
  assert.deepEqual(events[0].data, { from: 'sdk' });
  assert.deepEqual(natives[0].data, { from: 'native' });

  // History of the channel holds the Pusher event too.
  const history = await fetch(`${server.url}/api/history/${name}`, {
    headers: { authorization: `Bearer ${API_KEY}` },
  }).then((r) => r.json());
  assert.equal(history.messages.length, 2);
  native.close();
  client.disconnect();
});

test('a closed pusher-js connection leaves its channels', async () => {
  const client = server.client();
  const name = uniq('leave');
  await subscribed(client, name);
  const sdk = server.sdk();
  const count = async () => {
    const res = await sdk.get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
    return res.json();
  };
  assert.deepEqual(await count(), { occupied: true, subscription_count: 1 });
  client.disconnect();
  await until(async () => (await count()).occupied === false, 'the channel to be vacated');
});
