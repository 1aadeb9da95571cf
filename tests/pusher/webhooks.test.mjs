// Webhooks, received by a Node http server and verified with the SDK's own webhook() helper.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { collect, sleep, startServer, subscribed, uniq, until, webhookReceiver } from './harness.mjs';

let server;
let hooks;
before(async () => {
  // The endpoint fails its first request: the server retries it.
  hooks = await webhookReceiver({ failFirst: 1 });
  server = await startServer({
    appToml: `\n[[pusher.apps.webhooks]]\nurl = "${hooks.url}"\n`,
  });
});
after(async () => {
  await server?.stop();
  await hooks?.close();
});

const find = (pred) => hooks.events().find(pred);

test('every webhook request is signed: the SDK webhook() helper accepts it, and a tampered one not', async () => {
  const name = uniq('signed');
  const client = server.client();
  await subscribed(client, name);
  await until(() => find((e) => e.name === 'channel_occupied' && e.channel === name), 'channel_occupied', 8000);
  assert.ok(hooks.failures() >= 1, 'the first attempt failed and was retried');
  const sdk = server.sdk();
  for (const request of hooks.requests) {
    const hook = sdk.webhook(request);
    assert.equal(hook.isValid(), true, request.rawBody);
    assert.equal(request.headers['x-pusher-key'], 'app-key');
    assert.equal(typeof hook.getTime().getTime(), 'number');
    const tampered = sdk.webhook({ headers: request.headers, rawBody: request.rawBody.replace('"events"', '"events" ') });
    assert.equal(tampered.isValid(), false);
  }
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const metric = (name) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(metrics)?.[1]);
  assert.ok(metric('switchboard_pusher_webhooks_sent_total') >= 1, metrics);
  assert.ok(metric('switchboard_pusher_webhooks_failed_total') >= 1, 'the failed first attempt is counted');
  client.disconnect();
});

test('channel_occupied and, after the documented delay, channel_vacated', async () => {
  const name = uniq('occupancy');
  const client = server.client();
  await subscribed(client, name);
  await until(() => find((e) => e.name === 'channel_occupied' && e.channel === name), 'occupied');
  client.disconnect();
  const left = Date.now();
  await until(() => find((e) => e.name === 'channel_vacated' && e.channel === name), 'vacated', 8000);
  assert.ok(Date.now() - left >= 2500, 'vacated waits a few seconds');
});

test('a channel left and joined again within the delay reports no vacated', async () => {
  const name = uniq('flap');
  const a = server.client();
  await subscribed(a, name);
  await until(() => find((e) => e.name === 'channel_occupied' && e.channel === name), 'occupied');
  a.unsubscribe(name);
  await sleep(300);
  await subscribed(a, name);
  await sleep(4000);
  const events = hooks.events().filter((e) => e.channel === name).map((e) => e.name);
  assert.deepEqual(events, ['channel_occupied']);
  a.disconnect();
});

test('member_added, member_removed and client_event', async () => {
  const name = uniq('presence-hooks');
  const alice = server.client({ presence: { user_id: 'alice', user_info: {} } });
  const bob = server.client({ presence: { user_id: 'bob' } });
  const [chA] = await subscribed(alice, name);
  const [chB] = await subscribed(bob, name);
  const got = collect(chB, 'client-wave');
  chA.trigger('client-wave', { hi: 1 });
  await until(() => got.length === 1, 'client event delivered');
  await until(() => find((e) => e.name === 'member_added' && e.channel === name && e.user_id === 'bob'), 'member_added bob');
  assert.ok(find((e) => e.name === 'member_added' && e.channel === name && e.user_id === 'alice'));
  const event = await until(() => find((e) => e.name === 'client_event' && e.channel === name), 'client_event');
  assert.equal(event.event, 'client-wave');
  assert.deepEqual(JSON.parse(event.data), { hi: 1 });
  assert.equal(event.socket_id, alice.connection.socket_id);
  assert.equal(event.user_id, 'alice');
  bob.disconnect();
  await until(() => find((e) => e.name === 'member_removed' && e.channel === name && e.user_id === 'bob'), 'member_removed', 8000);
  alice.disconnect();
});

test('events that happen together arrive batched in one request', async () => {
  const tag = uniq('batch');
  const names = [1, 2, 3, 4, 5].map((i) => `${tag}-${i}`);
  const client = server.client();
  for (const name of names) client.subscribe(name);
  await until(() => names.every((n) => find((e) => e.name === 'channel_occupied' && e.channel === n)), 'five occupied');
  const carrying = hooks.requests.filter((r) => names.some((n) => r.rawBody.includes(n)));
  assert.ok(carrying.length < names.length, `batched: ${carrying.length} requests for ${names.length} events`);
  client.disconnect();
});

test('cache_miss when a cache channel has nothing to replay', async () => {
  const name = uniq('cache-hook');
  const client = server.client();
  client.subscribe(name);
  await until(() => find((e) => e.name === 'cache_miss' && e.channel === name), 'cache_miss');
  client.disconnect();
});
