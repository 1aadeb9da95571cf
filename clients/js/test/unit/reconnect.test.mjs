// The reconnect and recovery state machine, with a fake clock and fake transports: transport
// fallback, backoff, resubscribing from the last delivered position, never delivering an
// offset twice, calls surviving a drop, the watchdog. Runs against the built dist/index.js.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Switchboard } from '../../dist/index.js';
import { FakeClock, fakeTransports, flush } from './fakes.mjs';

function client(options = {}) {
  const clock = new FakeClock();
  const fakes = fakeTransports();
  const logs = [];
  const sb = new Switchboard('http://server.test', {
    clock,
    transportFactories: fakes.factories,
    logger: (level, message) => logs.push(`${level}: ${message}`),
    ...options,
  });
  const states = [];
  sb.on('state', (s) => states.push(s));
  return { sb, clock, fakes, logs, states };
}

/** Records a subscription's events. */
function record(sub) {
  const events = [];
  sub.on('message', (m) => events.push({ message: m.offset, epoch: m.epoch, data: m.data }));
  sub.on('subscribed', (s) => events.push({ subscribed: s }));
  sub.on('error', (e) => events.push({ error: e }));
  return events;
}

const message = (channel, offset, epoch = 'e1') => ({ type: 'message', channel, offset, epoch, data: { n: offset } });
const offsets = (events) => events.filter((e) => 'message' in e).map((e) => e.message);

test('tries the transports in order and settles on the first that connects', async () => {
  const { sb, clock, fakes, states } = client();
  sb.connect();
  await flush();
  assert.equal(fakes.last().name, 'websocket');
  fakes.last().drop('transport', 'WebSocket closed (1006)'); // a proxy refused the upgrade
  await flush();
  assert.equal(fakes.last().name, 'sse', 'moved on to SSE at once');
  fakes.last().connect({ session: 's1' });
  await flush();
  assert.equal(sb.state, 'connected');
  assert.equal(sb.transport, 'sse');
  assert.deepEqual(states, ['connecting', 'connected']);

  // A drop: it comes back on SSE (settled), after a backoff of at least minReconnectDelay.
  fakes.last().drop();
  await clock.advance(200);
  assert.equal(fakes.opened.length, 2, 'no reconnect before minReconnectDelay (250 ms)');
  await clock.advance(100);
  assert.equal(fakes.opened.length, 3);
  assert.equal(fakes.last().name, 'sse');
});

test('a transport that never says connected is given up after `timeout`', async () => {
  const { sb, clock, fakes } = client({ timeout: 3000, transports: ['websocket', 'long-poll'] });
  sb.connect();
  await flush();
  const ws = fakes.last();
  await clock.advance(2999);
  assert.equal(fakes.opened.length, 1);
  await clock.advance(1);
  assert.ok(ws.closedByClient, 'the silent WebSocket was closed');
  assert.equal(fakes.last().name, 'long-poll');
});

test('when every transport fails it backs off with jitter, growing up to maxReconnectDelay', async () => {
  const { sb, clock, fakes } = client({ transports: ['websocket'], minReconnectDelay: 100, maxReconnectDelay: 1000 });
  const errors = [];
  sb.on('error', (e) => errors.push(e));
  sb.connect();
  const gaps = [];
  let last = clock.now();
  for (let i = 0; i < 8; i++) {
    await flush();
    fakes.last().drop();
    const before = fakes.opened.length;
    while (fakes.opened.length === before) await clock.advance(10);
    gaps.push(clock.now() - last);
    last = clock.now();
  }
  for (const gap of gaps) assert.ok(gap >= 100 && gap <= 1010, `gap ${gap} within [min, max]`);
  assert.ok(gaps.at(-1) >= 500, `backoff grew: ${gaps.join(', ')}`);
  assert.ok(gaps.at(-1) > gaps[0], `backoff grew: ${gaps.join(', ')}`);
  assert.ok(errors.every((e) => e.code === 'transport'));
});

test('the settled transport failing to open twice makes it try the list from the top', async () => {
  const { sb, clock, fakes } = client();
  sb.connect();
  await flush();
  fakes.last().drop(); // websocket refused
  await flush();
  fakes.last().connect(); // sse works
  await flush();
  fakes.last().drop(); // dropped after connecting
  for (let i = 0; i < 2; i++) {
    const before = fakes.opened.length;
    while (fakes.opened.length === before) await clock.advance(50);
    assert.equal(fakes.last().name, 'sse');
    fakes.last().drop(); // and now fails to open
  }
  const before = fakes.opened.length;
  while (fakes.opened.length === before) await clock.advance(50);
  assert.equal(fakes.last().name, 'websocket', 'back to the first transport');
});

test('resubscribes from the last delivered position and never delivers an offset twice', async () => {
  const { sb, clock, fakes } = client();
  const sub = sb.subscribe('chat');
  const events = record(sub);
  sb.connect();
  await flush();
  let t = fakes.last();
  t.connect();
  await flush();
  const [first] = t.commands('subscribe');
  assert.equal(first.channel, 'chat');
  assert.equal(first.since, undefined, 'a first subscribe has no since');
  t.reply(first, { channel: 'chat', offset: 0, epoch: 'e1' });
  for (const n of [1, 2, 3]) t.frame(message('chat', n));
  await flush();

  t.drop();
  await clock.advance(300);
  t = fakes.last();
  t.connect();
  await flush();
  const [again] = t.commands('subscribe');
  assert.deepEqual(again.since, { offset: 3, epoch: 'e1' }, 'resubscribed from the last delivered offset');
  // The server recovers 4 and 5; a repeat of 3 (say, a stream that overlapped) is skipped.
  t.reply(again, { channel: 'chat', offset: 5, epoch: 'e1', recovered: true });
  for (const n of [3, 4, 5, 5, 6]) t.frame(message('chat', n));
  await flush();

  assert.deepEqual(offsets(events), [1, 2, 3, 4, 5, 6]);
  const subscribed = events.filter((e) => e.subscribed).map((e) => e.subscribed);
  assert.deepEqual(subscribed, [
    { offset: 0, epoch: 'e1', recovered: false },
    { offset: 5, epoch: 'e1', recovered: true },
  ]);
});

test('messages that overtake the subscribe reply are held, then delivered after `subscribed`', async () => {
  const { sb, fakes } = client({ transports: ['sse'] });
  const sub = sb.subscribe('feed', { since: { offset: 10, epoch: 'e1' } });
  const events = record(sub);
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect({ session: 's' });
  await flush();
  const [cmd] = t.commands('subscribe');
  assert.deepEqual(cmd.since, { offset: 10, epoch: 'e1' }, 'the since option is sent');
  // On a one-way door the recovered messages come on the stream, the reply through the POST.
  t.frame(message('feed', 11));
  t.frame(message('feed', 12));
  await flush();
  assert.deepEqual(events, [], 'nothing delivered before the reply');
  t.reply(cmd, { channel: 'feed', offset: 12, epoch: 'e1', recovered: true });
  t.frame(message('feed', 13));
  await flush();
  assert.deepEqual(events.map((e) => (e.subscribed ? 'subscribed' : e.message)), ['subscribed', 11, 12, 13]);
});

test('a new epoch: recovered false, and the new stream\'s offsets are delivered from where it starts', async () => {
  const { sb, clock, fakes } = client();
  const events = record(sb.subscribe('c'));
  sb.connect();
  await flush();
  let t = fakes.last();
  t.connect();
  await flush();
  t.reply(t.commands('subscribe')[0], { channel: 'c', offset: 7, epoch: 'old' });
  await flush();
  t.frame(message('c', 8, 'old'));
  t.drop();
  await clock.advance(300);
  t = fakes.last();
  t.connect();
  await flush();
  const [cmd] = t.commands('subscribe');
  assert.deepEqual(cmd.since, { offset: 8, epoch: 'old' });
  t.reply(cmd, { channel: 'c', offset: 2, epoch: 'new', recovered: false });
  t.frame(message('c', 3, 'new'));
  await flush();
  assert.deepEqual(events.filter((e) => 'message' in e).map((e) => `${e.epoch}:${e.message}`), ['old:8', 'new:3']);
  assert.deepEqual(events.filter((e) => e.subscribed).at(-1).subscribed, { offset: 2, epoch: 'new', recovered: false });
  assert.deepEqual(sb.subscriptions.get('c').position, { offset: 3, epoch: 'new' });
});

test('a publish interrupted by a drop is sent again with the same idempotency key', async () => {
  const { sb, clock, fakes } = client();
  sb.connect();
  await flush();
  let t = fakes.last();
  t.connect();
  await flush();
  const published = sb.publish('c', { hello: 1 });
  await flush();
  const [cmd] = t.commands('publish');
  assert.equal(typeof cmd.idempotency_key, 'string');
  t.drop();
  await clock.advance(300);
  t = fakes.last();
  t.connect();
  await flush();
  const [again] = t.commands('publish');
  assert.equal(again.idempotency_key, cmd.idempotency_key);
  assert.deepEqual(again.data, { hello: 1 });
  t.reply(again, { offset: 1, epoch: 'e' });
  assert.deepEqual(await published, { offset: 1, epoch: 'e' });
});

test('calls made before connecting wait for the connection', async () => {
  const { sb, fakes } = client();
  const history = sb.subscribe('c').history({ limit: 2 });
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect();
  await flush();
  const [cmd] = t.commands('history');
  assert.equal(cmd.limit, 2);
  t.reply(cmd, { messages: [message('c', 4)], offset: 4, epoch: 'e1' });
  assert.deepEqual(await history, { messages: [{ channel: 'c', data: { n: 4 }, offset: 4, epoch: 'e1' }], offset: 4, epoch: 'e1' });
});

test('every awaited call rejects with {code, message} on an error frame, and on a timeout', async () => {
  const { sb, clock, fakes } = client({ timeout: 1000 });
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect();
  await flush();
  const sub = sb.subscribe('c');
  const publish = sb.publish('c', 1);
  const presence = assert.rejects(sub.presence(), (e) => e.code === 'timeout' && /presence/.test(e.message));
  await flush();
  t.error(t.commands('publish')[0], 'forbidden', 'not allowed to publish to `c`');
  await assert.rejects(publish, (e) => e.code === 'forbidden' && e.message === 'not allowed to publish to `c`');
  await clock.advance(1000);
  await presence;
});

test('a refused subscribe emits error and is not renewed; a passing refusal is retried', async () => {
  const { sb, clock, fakes } = client();
  const denied = record(sb.subscribe('secret'));
  const busy = record(sb.subscribe('busy'));
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect();
  await flush();
  t.error(t.commands('subscribe').find((c) => c.channel === 'secret'), 'forbidden');
  t.error(t.commands('subscribe').find((c) => c.channel === 'busy'), 'rate_limited');
  await flush();
  assert.deepEqual(denied.map((e) => e.error?.code), ['forbidden']);
  assert.equal(sb.subscriptions.has('secret'), false, 'a forbidden subscription is dropped');
  await clock.advance(1000);
  const retries = t.commands('subscribe').filter((c) => c.channel === 'busy');
  assert.equal(retries.length, 2, 'rate_limited is retried');
  t.reply(retries[1], { channel: 'busy', offset: 0, epoch: 'e' });
  await flush();
  assert.equal(busy.at(-1).subscribed.offset, 0);
});

test('a disconnect frame that says not to reconnect stops the client', async () => {
  const { sb, clock, fakes, states } = client();
  const stops = [];
  sb.on('disconnected', (d) => stops.push(d));
  sb.connect();
  await flush();
  fakes.last().connect();
  await flush();
  const pending = assert.rejects(sb.publish('c', 1), (e) => e.code === 'forbidden');
  fakes.last().frame({ type: 'disconnect', code: 'forbidden', message: 'disconnected by the server API', reconnect: false });
  fakes.last().drop('forbidden', 'closed 4004');
  await clock.advance(20_000);
  assert.equal(fakes.opened.length, 1, 'no reconnect');
  assert.deepEqual(states, ['connecting', 'connected', 'disconnected']);
  assert.deepEqual(stops, [{ code: 'forbidden', message: 'disconnected by the server API', reconnect: false }]);
  await pending;
});

test('a link that goes silent is dropped: pings over WebSocket, then gives up', async () => {
  const { sb, clock, fakes } = client();
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect({ ping_interval: 10 });
  await flush();
  await clock.advance(10_000);
  assert.equal(t.commands('ping').length, 1, 'a ping after one quiet interval');
  await clock.advance(15_000);
  assert.ok(t.closedByClient, 'dropped after two intervals and 5 s of silence');
  assert.equal(sb.state, 'connecting');
});

test('rooms are joined again after a reconnect, under a new peer id, with a true roster', async () => {
  const { sb, clock, fakes } = client();
  sb.connect();
  await flush();
  let t = fakes.last();
  t.connect();
  await flush();
  const joining = sb.joinRoom('call:1', { meta: { name: 'Ann' } });
  await flush();
  const [join] = t.commands('join_room');
  assert.deepEqual(join.meta, { name: 'Ann' });
  const bob = { peer: 'bob1', user: 'bob', info: null, meta: null };
  const cy = { peer: 'cy1', user: 'cy', info: null, meta: null };
  t.reply(join, { room: 'call:1', peer: 'me1', peers: [bob, cy], ice_servers: [{ urls: 'stun:x' }] });
  const room = await joining;
  assert.equal(room.peer, 'me1');
  assert.deepEqual(room.iceServers, [{ urls: 'stun:x' }]);
  const events = [];
  room.on('peer_joined', (p) => events.push(`joined ${p.peer}`));
  room.on('peer_left', (id) => events.push(`left ${id}`));
  room.on('rejoined', (r) => events.push(`rejoined ${r.previous}->${r.peer}`));
  const meta = room.updateMeta({ name: 'Ann B' });
  await flush();
  t.reply(t.commands('update_meta')[0]);
  await meta;
  t.drop();
  await clock.advance(300);
  t = fakes.last();
  t.connect();
  await flush();
  const [rejoin] = t.commands('join_room');
  assert.equal(rejoin.room, 'call:1');
  assert.deepEqual(rejoin.meta, { name: 'Ann B' }, 'rejoined with the latest meta');
  // bob left meanwhile, dee arrived; cy is still there.
  const dee = { peer: 'dee1', user: 'dee', info: null, meta: null };
  t.reply(rejoin, { room: 'call:1', peer: 'me2', peers: [cy, dee], ice_servers: [] });
  t.frame({ type: 'peer_joined', room: 'call:1', peer: dee }); // the race the notes describe: no repeat
  await flush();
  assert.equal(room.peer, 'me2');
  assert.deepEqual(room.peers.map((p) => p.peer), ['cy1', 'dee1']);
  assert.deepEqual(events, ['left bob1', 'joined dee1', 'rejoined me1->me2']);
});

test('getToken: a refresh before exp, and a new token after token_expired', async () => {
  const clock0 = new FakeClock();
  const nowS = () => Math.floor(clock0.now() / 1000);
  const { jwt } = await import('./fakes.mjs');
  let issued = 0;
  const getToken = async () => jwt(nowS() + 8, `t${++issued}`);
  const fakes = fakeTransports();
  const sb = new Switchboard('http://server.test', { clock: clock0, transportFactories: fakes.factories, getToken, token: jwt(nowS() - 5) });
  sb.connect();
  await flush();
  assert.equal(issued, 1, 'an expired initial token is replaced before connecting');
  let t = fakes.last();
  assert.equal(t.token, await Promise.resolve(jwt(nowS() + 8, 't1')));
  t.connect({ exp: nowS() + 8 });
  await flush();
  await clock0.advance(5_000);
  assert.equal(t.commands('refresh').length, 0, 'not refreshed too early');
  await clock0.advance(2_100); // 8 s lifetime, refreshed at least 1 s (a quarter: 2 s) before exp
  const [refresh] = t.commands('refresh');
  assert.ok(refresh, 'refresh sent before exp');
  assert.equal(issued, 2);
  t.reply(refresh, { exp: nowS() + 8 });
  await flush();
  // The server closes with token_expired: a new token, and a reconnect at once.
  t.frame({ type: 'disconnect', code: 'token_expired', message: 'token expired', reconnect: true });
  t.drop('token_expired', 'closed 4001');
  await flush();
  assert.equal(issued, 3);
  t = fakes.last();
  assert.equal(fakes.opened.length, 2);
  assert.equal(t.token, jwt(nowS() + 8, 't3'));
});

test('disconnect() closes the transport with a farewell, and calls fail at once afterwards', async () => {
  const { sb, fakes, states } = client({ transports: ['long-poll'] });
  sb.subscribe('a');
  sb.connect();
  await flush();
  const t = fakes.last();
  t.connect({ session: 's' });
  await flush();
  sb.disconnect();
  assert.ok(t.closedByClient);
  assert.deepEqual(t.farewell.map((c) => `${c.type} ${c.channel}`), ['unsubscribe a']);
  assert.equal(states.at(-1), 'disconnected');
  await assert.rejects(sb.publish('a', 1), (e) => e.code === 'disconnected');
});
