// The media plane (spec §9) as users meet it: one Chromium page publishes its (fake) camera by
// WHIP from the server's own /demo/whip page, another plays the room by WHEP from /demo/whep and
// must decode the video: inbound-rtp `framesDecoded` above zero and rising. Then the refusals a
// client can meet (no rooms claim, wrong content type, unknown session), a trickle PATCH, and a
// DELETE that ends the publisher so the viewer's frames stop.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { WEBRTC_ARGS, launchBrowser, startServer, uniq } from './harness.mjs';

const AIORTC_PUBLISHER = join(dirname(fileURLToPath(import.meta.url)), 'aiortc', 'whip_publish.py');

let browser;
let sb;
before(async () => {
  sb = await startServer();
  browser = await launchBrowser({ args: WEBRTC_ARGS });
}, { timeout: 40_000 });
after(async () => {
  await browser?.close();
  await sb?.stop();
});

const stageToken = (user) => sb.token(user, { extra: { rooms: ['stage:*'] } });

async function waitFor(what, fn, { timeout = 15_000 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(150);
  }
}

async function openPage(context, url, lines, who) {
  const page = await context.newPage();
  page.on('console', (m) => lines.push(`[${who}] [${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[${who}] [pageerror] ${e.message}`));
  const res = await page.goto(url, { timeout: 10_000 });
  assert.equal(res.status(), 200, `GET ${url} answered ${res.status()}`);
  return page;
}

const metric = async (name, server = sb) => {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}_total `));
  return line ? Number(line.split(' ')[1]) : NaN;
};

test('WHIP from a page, WHEP in another: the viewer decodes the video; DELETE ends it', { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const lines = [];
  const room = `stage:${uniq('show')}`;
  const q = (user) => `room=${encodeURIComponent(room)}&token=${encodeURIComponent(stageToken(uniq(user)))}`;
  try {
    // Junk on the media port first (it is the HTTP port number, UDP): dropped, harmless.
    const junk = createSocket('udp4');
    for (let i = 0; i < 2000; i++) {
      const bytes = Buffer.alloc(1 + (i % 1400), i % 256);
      await new Promise((ok) => junk.send(bytes, sb.port, '127.0.0.1', ok));
    }
    junk.close();
    const publisher = await openPage(context, `${sb.url}/demo/whip?${q('alice')}`, lines, 'whip');
    const resource = await waitFor('the WHIP session', () => publisher.evaluate(() => window.whip.error || window.whip.resource));
    assert.match(resource, /^\/rtc\/[0-9a-f]{32}$/, `Location: ${resource}`);
    await waitFor('the publisher to connect', () => publisher.evaluate(() => window.whip.pc?.connectionState === 'connected'));

    const viewer = await openPage(context, `${sb.url}/demo/whep?${q('bob')}`, lines, 'whep');
    await waitFor('the viewer to connect', () => viewer.evaluate(() => window.whep.error || window.whep.pc?.connectionState === 'connected'));
    assert.equal(await viewer.evaluate(() => window.whep.error), null);
    const first = await waitFor('decoded frames at the viewer', () => viewer.evaluate(() => window.whep.framesDecoded()));
    await sleep(1500);
    const later = await viewer.evaluate(() => window.whep.framesDecoded());
    assert.ok(later > first + 10, `framesDecoded must keep rising: ${first} then ${later}`);
    assert.ok(await metric('switchboard_media_peers') >= 2, 'both peers counted');
    assert.ok(await metric('switchboard_media_packets_forwarded') > 0, 'packets forwarded counted');

    // A trickle PATCH on the session's resource is accepted.
    const patch = await fetch(`${sb.url}${resource}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/trickle-ice-sdpfrag' },
      body: 'a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n',
    });
    assert.equal(patch.status, 204, await patch.text());
    const garbled = await fetch(`${sb.url}${resource}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/trickle-ice-sdpfrag' },
      body: 'a=candidate:this is not a candidate\r\n',
    });
    assert.equal(garbled.status, 400, 'a malformed candidate is refused');
    assert.equal((await garbled.json()).error.code, 'bad_request');
    const many = Array.from({ length: 70 }, (_, i) => `a=candidate:${i} 1 udp 2130706431 127.0.0.1 ${40000 + i} typ host`).join('\r\n');
    const flood = await fetch(`${sb.url}${resource}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/trickle-ice-sdpfrag' },
      body: `${many}\r\n`,
    });
    assert.equal(flood.status, 400, 'a session takes a bounded number of candidates');
    assert.match((await flood.json()).error.message, /at most 64/);

    // DELETE ends the publisher: the viewer's frames stop rising, the session is gone.
    const del = await fetch(`${sb.url}${resource}`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    await sleep(1000);
    const stopped = await viewer.evaluate(() => window.whep.framesDecoded());
    await sleep(1500);
    const after2 = await viewer.evaluate(() => window.whep.framesDecoded());
    assert.ok(after2 - stopped <= 2, `frames must stop after DELETE: ${stopped} then ${after2}`);
    const again = await fetch(`${sb.url}${resource}`, { method: 'DELETE' });
    assert.equal(again.status, 404, 'a session ends once');
    // And the viewer's own session ends the same way.
    const viewing = await viewer.evaluate(() => window.whep.resource);
    assert.match(viewing, /^\/rtc\/[0-9a-f]{32}$/);
    assert.equal((await fetch(`${sb.url}${viewing}`, { method: 'DELETE' })).status, 200);
    await waitFor('both peers gone from the server', async () => await metric('switchboard_media_peers') === 0);
  } catch (e) {
    e.message += `\n--- pages ---\n${lines.slice(-40).join('\n')}\n--- server ---\n${sb.output?.().slice(-4000) ?? ""}`;
    throw e;
  } finally {
    await context.close();
  }
});

test('refusals: 401 without a token, 403 outside the rooms claim, 415, 400 on bad SDP, 404', { timeout: 20_000 }, async () => {
  const offer = (path, { token, type = 'application/sdp', body = 'v=0\r\n' } = {}) => fetch(`${sb.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': type, ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body,
  });
  const room = `stage:${uniq('r')}`;
  let res = await offer(`/whip/${room}`);
  assert.equal(res.status, 401, 'no token');
  res = await offer(`/whip/${room}`, { token: sb.token(uniq('u')) });
  assert.equal(res.status, 403, 'no rooms claim');
  assert.equal((await res.json()).error.code, 'forbidden');
  res = await offer(`/whip/${room}`, { token: stageToken(uniq('u')), type: 'application/json' });
  assert.equal(res.status, 415, 'not application/sdp');
  res = await offer(`/whip/${room}`, { token: stageToken(uniq('u')), body: 'not sdp at all' });
  assert.equal(res.status, 400, 'unusable SDP');
  assert.equal((await res.json()).error.code, 'bad_request');
  res = await offer(`/whep/${room}/00000000000000000000000000000000`, { token: stageToken(uniq('u')), body: 'v=0\r\n' });
  assert.ok([400, 404].includes(res.status), `unknown publisher: ${res.status}`);
  res = await fetch(`${sb.url}/rtc/nope`, { method: 'DELETE' });
  assert.equal(res.status, 404, 'unknown session');
  res = await fetch(`${sb.url}/rtc/nope`, { method: 'PATCH', headers: { 'content-type': 'text/plain' }, body: 'x' });
  assert.equal(res.status, 415, 'PATCH wants a trickle fragment');
  res = await offer(`/whip/stage:${'r'.repeat(300)}`, { token: stageToken(uniq('u')) });
  assert.equal(res.status, 400, 'a room name over 255 bytes');
  res = await offer(`/whip/${room}`, { token: stageToken(uniq('u')), body: `v=0\r\n${'a=x\r\n'.repeat(20_000)}` });
  assert.equal(res.status, 413, 'an offer over max_sdp_bytes (64 KiB)');
  assert.equal((await res.json()).error.code, 'too_large');
  res = await fetch(`${sb.url}/rtc/nope`, { method: 'PATCH', headers: { 'content-type': 'application/trickle-ice-sdpfrag' }, body: 'a=x\r\n'.repeat(20_000) });
  assert.equal(res.status, 413, 'a trickle fragment over max_sdp_bytes');
});

test('peer connections count against the connection limits, and are given back', { timeout: 30_000 }, async () => {
  const limited = await startServer({ extraToml: '[limits]\nmax_connections_per_ip = 2\n' });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${limited.url}/health`);
    const token = limited.token(uniq('many'), { extra: { rooms: ['stage:*'] } });
    // Offers from one address, each a peer that holds its place until it ends.
    const statuses = await page.evaluate(async ({ token }) => {
      const post = async () => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver('video', { direction: 'recvonly' });
        await pc.setLocalDescription(await pc.createOffer());
        const res = await fetch('/whep/stage:limits', {
          method: 'POST',
          headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
          body: pc.localDescription.sdp,
        });
        return { status: res.status, location: res.headers.get('Location'), body: res.status === 201 ? '' : await res.text() };
      };
      const got = [await post(), await post(), await post()];
      await fetch(got[0].location, { method: 'DELETE' });
      got.push(await post());
      return got;
    }, { token });
    assert.deepEqual(statuses.map((s) => s.status), [201, 201, 429, 201], JSON.stringify(statuses));
    assert.equal(JSON.parse(statuses[2].body).error.code, 'rate_limited');
    // The other door is refused the same way while the two peers hold their places.
    const ws = await fetch(`${limited.url}/poll?channel=x&timeout=1&token=${limited.token(uniq("other"))}`);
    assert.equal(ws.status, 429, 'the limit is the node\'s, for every door');
  } finally {
    await context.close();
    await limited.stop();
  }
});

/** Opens `/rtc` with `channels` data channels in the page (same origin); answers their labels. */
async function openLink(page, token, channels) {
  return page.evaluate(async ({ token, channels }) => {
    const pc = new RTCPeerConnection();
    const links = {};
    for (const [name, options] of Object.entries(channels)) {
      const dc = pc.createDataChannel('switchboard', options);
      const link = { dc, frames: [], open: false };
      dc.onmessage = (e) => link.frames.push(JSON.parse(e.data));
      dc.onopen = () => { link.open = true; };
      dc.onclose = () => { link.closed = true; };
      links[name] = link;
    }
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch('/rtc', {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) return { error: `${res.status} ${await res.text()}` };
    window.link = { pc, links, resource: res.headers.get('Location') };
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    return { resource: window.link.resource };
  }, { token, channels });
}

const framesOf = (page, name) => page.evaluate((n) => window.link.links[n].frames, name);
const sendOn = (page, name, frame) => page.evaluate(({ n, f }) => window.link.links[n].dc.send(JSON.stringify(f)), { n: name, f: frame });

test('a switchboard data channel on POST /rtc is a door: connected, subscribe, publish, history, rooms', { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${sb.url}/health`);
    const user = uniq('dc-user');
    const token = sb.token(user, { extra: { rooms: ['stage:*'], publish: ['dc:*'], subscribe: ['dc:*'] } });
    const opened = await openLink(page, token, { main: {} });
    assert.ok(opened.resource, `POST /rtc: ${JSON.stringify(opened)}`);
    await waitFor('the data channel to open', () => page.evaluate(() => window.link.links.main.open));
    const connected = await waitFor('the connected frame', async () => (await framesOf(page, 'main'))[0]);
    assert.equal(connected.type, 'connected', JSON.stringify(connected));
    assert.equal(connected.user, user);

    const channel = `dc:${uniq('news')}`;
    await sendOn(page, 'main', { type: 'subscribe', id: 1, channel });
    await waitFor('the subscribe reply', async () => (await framesOf(page, 'main')).find((f) => f.id === 1));
    await sb.publish(channel, { from: 'api' });
    await sendOn(page, 'main', { type: 'publish', id: 2, channel, data: { from: 'dc' } });
    const messages = await waitFor('both messages', async () => {
      const got = (await framesOf(page, 'main')).filter((f) => f.type === 'message');
      return got.length >= 2 && got;
    });
    assert.deepEqual(messages.map((m) => [m.offset, m.data.from]), [[1, 'api'], [2, 'dc']]);
    await sendOn(page, 'main', { type: 'history', id: 3, channel });
    const history = await waitFor('the history reply', async () => (await framesOf(page, 'main')).find((f) => f.id === 3));
    assert.deepEqual(history.messages.map((m) => m.data.from), ['api', 'dc']);
    await sendOn(page, 'main', { type: 'join_room', id: 4, room: `stage:${uniq('room')}` });
    const joined = await waitFor('the join_room reply', async () => (await framesOf(page, 'main')).find((f) => f.id === 4));
    assert.equal(joined.type, 'reply', JSON.stringify(joined));
    assert.ok(joined.peer, 'a peer id');
    // A frame over max_frame_size (64 KiB) is refused with too_large; the door goes on.
    await sendOn(page, 'main', { type: 'publish', id: 9, channel, data: 'x'.repeat(70_000) });
    const tooLarge = await waitFor('the too_large error', async () => (await framesOf(page, 'main')).find((f) => f.code === 'too_large'));
    assert.equal(tooLarge.type, 'error', JSON.stringify(tooLarge));
    await sendOn(page, 'main', { type: 'publish', id: 5, channel: 'elsewhere', data: 1 });
    const refused = await waitFor('the refusal', async () => (await framesOf(page, 'main')).find((f) => f.id === 5));
    assert.equal(refused.code, 'forbidden', JSON.stringify(refused));

    // The server API sees the client, and disconnecting it closes the door with a goodbye.
    await sb.disconnect(user);
    const bye = await waitFor('the disconnect frame', async () => (await framesOf(page, 'main')).find((f) => f.type === 'disconnect'));
    assert.ok(bye.code, JSON.stringify(bye));
  } finally {
    await context.close();
  }
});

test('an unordered, no-retransmit switchboard channel delivers too', { timeout: 40_000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${sb.url}/health`);
    const token = sb.token(uniq('fast'), { extra: { subscribe: ['dc:*'] } });
    const opened = await openLink(page, token, { fast: { ordered: false, maxRetransmits: 0 } });
    assert.ok(opened.resource, JSON.stringify(opened));
    await waitFor('the connected frame', async () => (await framesOf(page, 'fast'))[0]?.type === 'connected');
    const channel = `dc:${uniq('pos')}`;
    await sendOn(page, 'fast', { type: 'subscribe', id: 1, channel });
    await waitFor('the subscribe reply', async () => (await framesOf(page, 'fast')).find((f) => f.id === 1));
    for (let i = 1; i <= 50; i++) await sb.publish(channel, { i });
    const got = await waitFor('the newest message', async () => {
      const messages = (await framesOf(page, 'fast')).filter((f) => f.type === 'message');
      return messages.some((m) => m.data.i === 50) && messages;
    });
    // Offsets still tell the client what it missed, whatever arrived.
    for (const m of got) assert.equal(m.offset, m.data.i);
  } finally {
    await context.close();
  }
});

test('under 20% loss the reliable channel gets every message, the unreliable one keeps getting the newest', { timeout: 90_000 }, async () => {
  // The loss is injected by the server (`test_loss_percent`): a fifth of what it sends to a
  // connected peer never leaves, as on a bad network.
  const lossy = await startServer({ extraToml: '[webrtc.media]\ntest_loss_percent = 20\n' });
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${lossy.url}/health`);
    const token = lossy.token(uniq('lossy'), { extra: { subscribe: ['dc:*'] } });
    const opened = await openLink(page, token, { sure: {}, fast: { ordered: false, maxRetransmits: 0 } });
    assert.ok(opened.resource, JSON.stringify(opened));
    await waitFor('both channels to open', () => page.evaluate(() => window.link.links.sure.open && window.link.links.fast.open), { timeout: 30_000 });
    const channel = `dc:${uniq('positions')}`;
    await sendOn(page, 'sure', { type: 'subscribe', id: 1, channel });
    await waitFor('the reliable subscribe reply', async () => (await framesOf(page, 'sure')).find((f) => f.id === 1), { timeout: 30_000 });
    // On the unreliable channel the answer itself may be lost: ask until one arrives.
    await waitFor('an answer to the unreliable subscribe', async () => {
      await sendOn(page, 'fast', { type: 'subscribe', id: 2, channel });
      await sleep(300);
      return (await framesOf(page, 'fast')).some((f) => f.id === 2);
    }, { timeout: 30_000 });
    const total = 200;
    for (let i = 1; i <= total; i++) await lossy.publish(channel, { i });
    const sure = await waitFor(`all ${total} on the reliable channel`, async () => {
      const got = (await framesOf(page, 'sure')).filter((f) => f.type === 'message');
      return got.length >= total && got;
    }, { timeout: 40_000 });
    assert.deepEqual(sure.map((m) => m.offset), Array.from({ length: total }, (_, k) => k + 1), 'every one, in order');
    await sleep(1500);
    const fast = (await framesOf(page, 'fast')).filter((f) => f.type === 'message');
    assert.ok(fast.length < total, `the unreliable channel retransmits nothing, yet got all ${total}`);
    assert.ok(fast.length >= total / 2, `most still arrive: ${fast.length}`);
    assert.ok(fast.some((m) => m.data.i > total - 10), `the newest arrive: last ${fast.at(-1)?.data.i}`);
    for (const m of fast) assert.equal(m.offset, m.data.i, 'offsets tell what was missed');

    // Video through the same loss: the viewer asks for what it missed (NACK), the server
    // retransmits, and the picture keeps decoding.
    const room = `stage:${uniq('lossy')}`;
    const q = (user) => `room=${encodeURIComponent(room)}&token=${encodeURIComponent(lossy.token(uniq(user), { extra: { rooms: ['stage:*'] } }))}`;
    const publisher = await context.newPage();
    await publisher.goto(`${lossy.url}/demo/whip?${q('cam')}`);
    await waitFor('the publisher to connect', () => publisher.evaluate(() => window.whip.error || window.whip.pc?.connectionState === 'connected'), { timeout: 30_000 });
    const viewer = await context.newPage();
    await viewer.goto(`${lossy.url}/demo/whep?${q('eye')}`);
    const first = await waitFor('decoded frames through the loss', () => viewer.evaluate(() => window.whep.error || window.whep.framesDecoded()), { timeout: 30_000 });
    assert.equal(typeof first, 'number', String(first));
    await sleep(3000);
    const later = await viewer.evaluate(() => window.whep.framesDecoded());
    assert.ok(later > first + 10, `framesDecoded must keep rising under loss: ${first} then ${later}`);
    const text = await (await fetch(`${lossy.url}/metrics`)).text();
    const nacks = Number(text.split('\n').find((l) => l.startsWith('switchboard_media_nacks'))?.split(' ')[1]);
    assert.ok(nacks > 0, `the viewer's NACKs are counted: ${nacks}`);
  } finally {
    await context.close();
    await lossy.stop();
  }
});

test('WHIP from aiortc (an independent WebRTC stack), WHEP in Chromium: frames decoded', { timeout: 60_000 }, async () => {
  const room = `stage:${uniq('aiortc')}`;
  const publisher = spawn('python3', [AIORTC_PUBLISHER, sb.url, room, stageToken(uniq('obs')), '8'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const steps = [];
  let stderr = '';
  publisher.stdout.on('data', (d) => { for (const line of String(d).split('\n').filter(Boolean)) steps.push(JSON.parse(line)); });
  publisher.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((ok) => publisher.on('exit', ok));
  const context = await browser.newContext();
  try {
    await waitFor('the aiortc publisher to connect', () => steps.find((s) => s.error || s.step === 'connected'), { timeout: 30_000 })
      .catch((e) => { e.message += `\n${JSON.stringify(steps)}\n${stderr.slice(-2000)}`; throw e; });
    assert.deepEqual(steps.filter((s) => s.error), [], stderr.slice(-2000));
    assert.equal(steps[0].status, 201);
    const viewer = await context.newPage();
    await viewer.goto(`${sb.url}/demo/whep?room=${encodeURIComponent(room)}&token=${encodeURIComponent(stageToken(uniq('eve')))}`);
    const first = await waitFor('decoded frames from aiortc', () => viewer.evaluate(() => window.whep.error || window.whep.framesDecoded()), { timeout: 20_000 });
    assert.equal(typeof first, 'number', String(first));
    await sleep(1500);
    const later = await viewer.evaluate(() => window.whep.framesDecoded());
    assert.ok(later > first + 10, `framesDecoded must keep rising: ${first} then ${later}`);
    const code = await exited;
    assert.equal(code, 0, `${JSON.stringify(steps)}\n${stderr.slice(-2000)}`);
    assert.deepEqual(steps.at(-1), { step: 'deleted', status: 200 }, 'DELETE ended the session');
  } finally {
    publisher.kill();
    await context.close();
  }
});

test('relay only: WHIP and WHEP pages reach the media through the embedded TURN server', { timeout: 60_000 }, async () => {
  const TURN_SECRET = 'media-turn-secret-0123456789abcdef-0123456789';
  const relayed = await startServer({
    extraToml: ({ udpPort }) => [
      '[webrtc]',
      `turn_secret = "${TURN_SECRET}"`,
      '',
      '[webrtc.turn]',
      `listen = "127.0.0.1:${udpPort}"`,
      'realm = "switchboard"',
      'public_ip = "127.0.0.1"',
      // The media server is on loopback here: let the relay reach it.
      'allow_loopback_peers = true',
    ].join('\n'),
  });
  const context = await browser.newContext();
  try {
    const room = `stage:${uniq('relay')}`;
    const q = (user) => `room=${encodeURIComponent(room)}&relay=1&token=${encodeURIComponent(relayed.token(uniq(user), { extra: { rooms: ['stage:*'] } }))}`;
    const publisher = await context.newPage();
    await publisher.goto(`${relayed.url}/demo/whip?${q('cam')}`);
    await waitFor('the relayed publisher to connect', () => publisher.evaluate(() => window.whip.error || window.whip.pc?.connectionState === 'connected'), { timeout: 30_000 });
    assert.equal(await publisher.evaluate(() => window.whip.error), null);
    const viewer = await context.newPage();
    await viewer.goto(`${relayed.url}/demo/whep?${q('eye')}`);
    const first = await waitFor('decoded frames through TURN', () => viewer.evaluate(() => window.whep.error || window.whep.framesDecoded()), { timeout: 30_000 });
    assert.equal(typeof first, 'number', String(first));
    await sleep(1500);
    const later = await viewer.evaluate(() => window.whep.framesDecoded());
    assert.ok(later > first + 10, `framesDecoded must keep rising: ${first} then ${later}`);
    assert.equal(await publisher.evaluate(() => window.whip.localCandidateType()), 'relay', 'the publisher sends through TURN');
    assert.equal(await viewer.evaluate(() => window.whep.localCandidateType()), 'relay', 'the viewer receives through TURN');
  } finally {
    await context.close();
    await relayed.stop();
  }
});

test('a data channel client past its command rate is answered rate_limited, and counted', { timeout: 30_000 }, async () => {
  const slow = await startServer({ extraToml: '[limits]\nclient_rate = 5\nclient_burst = 5\n' });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${slow.url}/health`);
    const opened = await openLink(page, slow.token(uniq('hasty')), { main: {} });
    assert.ok(opened.resource, JSON.stringify(opened));
    await waitFor('the connected frame', async () => (await framesOf(page, 'main'))[0]?.type === 'connected');
    await page.evaluate(() => {
      for (let i = 1; i <= 40; i++) window.link.links.main.dc.send(JSON.stringify({ type: 'ping', id: i }));
    });
    const answered = await waitFor('an answer to each of the 40', async () => {
      const got = (await framesOf(page, 'main')).filter((f) => f.id);
      return got.length >= 40 && got;
    });
    const limited = answered.filter((f) => f.code === 'rate_limited');
    assert.ok(limited.length >= 30, `most were over the rate: ${limited.length} of 40`);
    assert.ok(answered.some((f) => f.type === 'pong'), 'the burst was answered');
    const text = await (await fetch(`${slow.url}/metrics`)).text();
    const counted = Number(text.split('\n').find((l) => l.startsWith('switchboard_rate_limited'))?.split(' ')[1]);
    assert.ok(counted >= limited.length, `the refusals are counted: ${counted}`);
  } finally {
    await context.close();
    await slow.stop();
  }
});

test('bitrate caps: the answer caps a publisher, and one that ignores the cap is dropped', { timeout: 60_000 }, async () => {
  const capped = await startServer({ extraToml: '[webrtc.media]\nmax_track_bitrate = 100000\n' });
  const context = await browser.newContext();
  const token = capped.token(uniq('cam'), { extra: { rooms: ['stage:*'] } });
  /** WHIP from the page; `obey: false` strips the answer's b= lines, as a client ignoring them would. */
  const publish = (page, room, obey) => page.evaluate(async ({ room, token, obey }) => {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const pc = new RTCPeerConnection();
    pc.addTransceiver(stream.getVideoTracks()[0], { direction: 'sendonly' });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(`/whip/${encodeURIComponent(room)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const answer = await res.text();
    await pc.setRemoteDescription({ type: 'answer', sdp: obey ? answer : answer.replace(/^b=.*\r\n/gm, '') });
    window.pc = pc;
    window.sentBytes = async () => {
      let bytes = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') bytes += s.bytesSent; });
      return bytes;
    };
    return { status: res.status, cap: answer.match(/^b=AS:(\d+)/m)?.[1] ?? null };
  }, { room, token, obey });
  try {
    const polite = await context.newPage();
    await polite.goto(`${capped.url}/health`);
    const answered = await publish(polite, `stage:${uniq('capped')}`, true);
    assert.deepEqual(answered, { status: 201, cap: '100' });
    await waitFor('the capped publisher to connect', () => polite.evaluate(() => window.pc.connectionState === 'connected'));
    await sleep(2000);
    const start = await polite.evaluate(() => window.sentBytes());
    await sleep(4000);
    const sent = await polite.evaluate(() => window.sentBytes());
    const bps = ((sent - start) * 8) / 4;
    assert.ok(bps > 10_000 && bps < 130_000, `the publisher keeps under the cap: ${Math.round(bps)} bit/s`);

    const rude = await context.newPage();
    await rude.goto(`${capped.url}/health`);
    await publish(rude, `stage:${uniq('rude')}`, false);
    await waitFor('the publisher over the cap to be dropped', async () => await metric('switchboard_media_over_bitrate', capped) >= 1, { timeout: 20_000 });
    assert.equal(await polite.evaluate(() => window.pc.connectionState), 'connected', 'the polite publisher is untouched');
  } finally {
    await context.close();
    await capped.stop();
  }
});

test('simulcast: each viewer receives one layer, the best by default or the one it names', { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const lines = [];
  const room = `stage:${uniq('layers')}`;
  const q = (user, extra = '') => `room=${encodeURIComponent(room)}&token=${encodeURIComponent(stageToken(uniq(user)))}${extra}`;
  try {
    const publisher = await openPage(context, `${sb.url}/demo/whip?${q('cam', '&simulcast=1')}`, lines, 'whip');
    await waitFor('the simulcast publisher to connect', () => publisher.evaluate(() => window.whip.error || window.whip.pc?.connectionState === 'connected'));
    // Both layers go up (Chromium may take a moment to start the second).
    const sent = await waitFor('two layers sent', () => publisher.evaluate(async () => {
      const rids = [];
      (await window.whip.pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video' && s.framesEncoded > 0) rids.push(s.rid); });
      return rids.length >= 2 && rids.sort();
    }), { timeout: 20_000 });
    assert.deepEqual(sent, ['h', 'l']);
    const best = await openPage(context, `${sb.url}/demo/whep?${q('eye')}`, lines, 'best');
    const low = await openPage(context, `${sb.url}/demo/whep?${q('eye', '&layer=l')}`, lines, 'low');
    for (const [viewer, name] of [[best, 'best'], [low, 'low']]) {
      const first = await waitFor(`decoded frames at ${name}`, () => viewer.evaluate(() => window.whep.error || window.whep.framesDecoded()));
      assert.equal(typeof first, 'number', String(first));
      await sleep(2000);
      const later = await viewer.evaluate(() => window.whep.framesDecoded());
      assert.ok(later > first + 10, `${name}: framesDecoded must keep rising: ${first} then ${later}`);
    }
    const bestWidth = await best.evaluate(() => window.whep.frameWidth());
    const lowWidth = await low.evaluate(() => window.whep.frameWidth());
    assert.ok(bestWidth >= 320, `the default viewer gets the full layer: ${bestWidth}px wide`);
    assert.ok(lowWidth > 0 && lowWidth * 2 <= bestWidth, `layer=l gets the quarter-size one: ${lowWidth}px vs ${bestWidth}px`);
    const bad = await fetch(`${sb.url}/whep/${encodeURIComponent(room)}?layer=${encodeURIComponent('no such!')}`, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${stageToken(uniq('x'))}` },
      body: 'v=0\r\n',
    });
    assert.equal(bad.status, 400, 'a malformed layer name is refused');
  } catch (e) {
    e.message += `\n--- pages ---\n${lines.slice(-40).join('\n')}\n--- server ---\n${sb.output?.().slice(-4000) ?? ''}`;
    throw e;
  } finally {
    await context.close();
  }
});

test('ICE over TCP: a client that cannot reach the UDP candidate gets the media on the HTTP port', { timeout: 60_000 }, async () => {
  // UDP "blocked": each page drops the server's UDP candidate from the answer, so the only
  // way to the server is the TCP one (RFC 6544, on the HTTP listener's port).
  const context = await browser.newContext();
  const room = `stage:${uniq('tcp')}`;
  const connect = (page, path, direction) => page.evaluate(async ({ path, direction, token }) => {
    const pc = new RTCPeerConnection();
    if (direction === 'sendonly') {
      const stream = await navigator.mediaDevices.getUserMedia({ video: true });
      pc.addTransceiver(stream.getVideoTracks()[0], { direction });
    } else {
      pc.addTransceiver('video', { direction });
    }
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    const answer = await res.text();
    const candidates = answer.split('\r\n').filter((l) => l.startsWith('a=candidate:'));
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.replace(/^a=candidate:.* udp .*\r\n/gmi, '') });
    window.pc = pc;
    window.stat = async () => {
      const stats = await pc.getStats();
      const out = { protocol: null, framesDecoded: 0 };
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          out.protocol = stats.get(stats.get(s.selectedCandidatePairId)?.localCandidateId)?.protocol ?? null;
        }
        if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded += s.framesDecoded || 0;
      });
      return out;
    };
    return { status: res.status, candidates };
  }, { path, direction, token: stageToken(uniq('tcp')) });
  try {
    const publisher = await context.newPage();
    await publisher.goto(`${sb.url}/health`);
    const published = await connect(publisher, `/whip/${encodeURIComponent(room)}`, 'sendonly');
    assert.equal(published.status, 201);
    assert.ok(published.candidates.some((c) => / tcp .* typ host tcptype passive/i.test(c) && c.includes(` ${sb.port} `)),
      `a passive TCP candidate on the HTTP port: ${published.candidates.join(' | ')}`);
    await waitFor('the publisher to connect over TCP', () => publisher.evaluate(() => window.pc.connectionState === 'connected'), { timeout: 30_000 });
    const viewer = await context.newPage();
    await viewer.goto(`${sb.url}/health`);
    await connect(viewer, `/whep/${encodeURIComponent(room)}`, 'recvonly');
    const first = await waitFor('decoded frames over TCP', async () => (await viewer.evaluate(() => window.stat())).framesDecoded, { timeout: 30_000 });
    await sleep(2000);
    const later = await viewer.evaluate(() => window.stat());
    assert.ok(later.framesDecoded > first + 10, `framesDecoded must keep rising: ${first} then ${later.framesDecoded}`);
    assert.equal(later.protocol, 'tcp', 'the viewer receives over TCP');
    assert.equal((await publisher.evaluate(() => window.stat())).protocol, 'tcp', 'the publisher sends over TCP');

    // The port goes on serving HTTP; a connection posing as ICE-TCP that speaks for no peer
    // is closed.
    assert.equal((await fetch(`${sb.url}/health`)).status, 200);
    const { createConnection } = await import('node:net');
    const closed = await new Promise((resolve) => {
      const socket = createConnection(sb.port, '127.0.0.1', () => {
        const stun = Buffer.alloc(20);
        stun.writeUInt16BE(0x0001, 0);
        stun.writeUInt32BE(0x2112a442, 4);
        socket.write(Buffer.concat([Buffer.from([0, 20]), stun]));
      });
      socket.on('close', () => resolve(true));
      socket.on('error', () => resolve(true));
      setTimeout(() => resolve(false), 5000);
    });
    assert.ok(closed, 'a stray ICE-TCP connection is let go');
  } finally {
    await context.close();
  }
});

test('a data channel client that floods its door gets a clear goodbye; its other channel lives', { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${sb.url}/health`);
    const token = sb.token(uniq('flood'), { extra: { subscribe: ['dc:*'] } });
    const opened = await openLink(page, token, { flood: {}, calm: {} });
    assert.ok(opened.resource, JSON.stringify(opened));
    await waitFor('both connected frames', async () => (await framesOf(page, 'flood'))[0]?.type === 'connected'
      && (await framesOf(page, 'calm'))[0]?.type === 'connected');
    // Far more than the door's inbox holds, as fast as the page can send them.
    const sent = await page.evaluate(() => {
      const dc = window.link.links.flood.dc;
      let n = 0;
      const frame = JSON.stringify({ type: 'history', id: 1, channel: 'dc:nothing', limit: 100 });
      for (; n < 30000 && dc.readyState === 'open'; n++) dc.send(frame);
      return n;
    });
    const bye = await waitFor('the goodbye', async () => (await framesOf(page, 'flood')).find((f) => f.type === 'disconnect'), { timeout: 30_000 });
    assert.equal(bye.code, 'rate_limited', JSON.stringify(bye));
    await waitFor('the flooding channel to close', () => page.evaluate(() => window.link.links.flood.closed === true));
    await sendOn(page, 'calm', { type: 'ping', id: 7 });
    const pong = await waitFor('the calm channel\'s pong', async () => (await framesOf(page, 'calm')).find((f) => f.id === 7));
    assert.equal(pong.type, 'pong', `${sent} sent on the other channel; this one still answers`);
  } finally {
    await context.close();
  }
});
