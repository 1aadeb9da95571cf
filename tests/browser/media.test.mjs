// The media plane (spec §9) as users meet it: one Chromium page publishes its (fake) camera by
// WHIP from the server's own /demo/whip page, another plays the room by WHEP from /demo/whep and
// must decode the video: inbound-rtp `framesDecoded` above zero and rising. Then the refusals a
// client can meet (no rooms claim, wrong content type, unknown session), a trickle PATCH, and a
// DELETE that ends the publisher so the viewer's frames stop.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { WEBRTC_ARGS, launchBrowser, startServer, uniq } from './harness.mjs';

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

const metric = async (name) => {
  const text = await (await fetch(`${sb.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}_total `));
  return line ? Number(line.split(' ')[1]) : NaN;
};

test('WHIP from a page, WHEP in another: the viewer decodes the video; DELETE ends it', { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const lines = [];
  const room = `stage:${uniq('show')}`;
  const q = (user) => `room=${encodeURIComponent(room)}&token=${encodeURIComponent(stageToken(uniq(user)))}`;
  try {
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
});
