// Presence channels: members, member_added / member_removed, user_id on client events, and
// the API's presence queries.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { collect, once, sleep, startServer, subscribed, uniq, until } from './harness.mjs';

let server;
before(async () => { server = await startServer(); });
after(async () => { await server?.stop(); });

const member = (id, name) => ({ user_id: id, user_info: { name } });

test('a presence subscription lists the members; others see member_added and member_removed', async () => {
  const name = uniq('presence-room');
  const alice = server.client({ presence: member('alice', 'Alice') });
  const [chA, dataA] = await subscribed(alice, name);
  assert.equal(dataA.count, 1);
  assert.deepEqual(chA.members.me, { id: 'alice', info: { name: 'Alice' } });
  const added = collect(chA, 'pusher:member_added');
  const removed = collect(chA, 'pusher:member_removed');

  const bob = server.client({ presence: member('bob', 'Bob') });
  const [chB, dataB] = await subscribed(bob, name);
  assert.equal(dataB.count, 2);
  const seen = {};
  chB.members.each((m) => { seen[m.id] = m.info; });
  assert.deepEqual(seen, { alice: { name: 'Alice' }, bob: { name: 'Bob' } });

  await until(() => added.length === 1, 'member_added at alice');
  assert.deepEqual(added[0].data, { id: 'bob', info: { name: 'Bob' } });
  assert.equal(chA.members.count, 2);

  bob.disconnect();
  await until(() => removed.length === 1, 'member_removed at alice');
  assert.equal(removed[0].data.id, 'bob');
  assert.equal(chA.members.count, 1);
  alice.disconnect();
});

test('a user with two connections is one member: added once, removed when the last one leaves', async () => {
  const name = uniq('presence-tabs');
  const watcher = server.client({ presence: member('watcher', 'W') });
  const [ch] = await subscribed(watcher, name);
  const added = collect(ch, 'pusher:member_added');
  const removed = collect(ch, 'pusher:member_removed');
  const tab1 = server.client({ presence: member('carol', 'Carol') });
  const tab2 = server.client({ presence: member('carol', 'Carol') });
  const [, data1] = await subscribed(tab1, name);
  const [, data2] = await subscribed(tab2, name);
  assert.equal(data1.count, 2);
  assert.equal(data2.count, 2, 'carol counts once');
  await until(() => added.length >= 1, 'member_added');
  await sleep(200);
  assert.equal(added.length, 1);
  tab1.disconnect();
  await sleep(300);
  assert.equal(removed.length, 0, 'carol still has a connection');
  tab2.disconnect();
  await until(() => removed.length === 1, 'member_removed once the last tab left');
  watcher.disconnect();
});

test('numeric user ids, and a forged channel_data is refused', async () => {
  const name = uniq('presence-ids');
  const client = server.client({ presence: { user_id: 42 } });
  const [ch] = await subscribed(client, name);
  assert.deepEqual(Object.keys(ch.members.members), ['42'], 'the server lists the id as a string');

  const sdk = server.sdk();
  // Signed for one identity, sent with another.
  const liar = server.client({
    authorize: (socketId, channel) => ({
      ...sdk.authorizeChannel(socketId, channel, { user_id: 'honest' }),
      channel_data: JSON.stringify({ user_id: 'admin' }),
    }),
  });
  const chL = liar.subscribe(name);
  const error = await once(chL, 'pusher:subscription_error');
  assert.equal(error.status, 401);
  client.disconnect();
  liar.disconnect();
});

test('client events on presence channels carry the sender user_id', async () => {
  const name = uniq('presence-chat');
  const a = server.client({ presence: member('ann', 'Ann') });
  const b = server.client({ presence: member('ben', 'Ben') });
  const [chA] = await subscribed(a, name);
  const [chB] = await subscribed(b, name);
  const got = collect(chB, 'client-hello');
  chA.trigger('client-hello', { text: 'hi' });
  await until(() => got.length === 1, 'client event at ben');
  assert.deepEqual(got[0].data, { text: 'hi' });
  assert.equal(got[0].meta?.user_id, 'ann');
  a.disconnect();
  b.disconnect();
});

test('the API lists presence users and counts them', async () => {
  const name = uniq('presence-count');
  const a = server.client({ presence: member('u1', 'One') });
  const b = server.client({ presence: member('u2', 'Two') });
  const c = server.client({ presence: member('u2', 'Two') });
  await subscribed(a, name);
  await subscribed(b, name);
  await subscribed(c, name);
  const sdk = server.sdk();
  const users = await (await sdk.get({ path: `/channels/${name}/users` })).json();
  assert.deepEqual(users, { users: [{ id: 'u1' }, { id: 'u2' }] });
  const info = await (await sdk.get({ path: `/channels/${name}`, params: { info: 'user_count,subscription_count' } })).json();
  assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });
  const list = await (await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.deepEqual(list.channels[name], { user_count: 2 });
  await assert.rejects(sdk.get({ path: '/channels', params: { info: 'user_count' } }), (e) => e.status === 400);
  await assert.rejects(sdk.get({ path: `/channels/${uniq('public')}/users` }), (e) => e.status === 400);
  for (const x of [a, b, c]) x.disconnect();
});
