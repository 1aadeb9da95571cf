// The WebRTC helper: two pages (one signalling over WebSocket, the other over SSE and its
// session) join a room; the newcomer calls everyone with `room.callAll()`, the other answers
// by itself; each must decode the other's fake camera (framesDecoded rising). Then one leaves
// and the other's call ends with `peer_left`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { uniq } from '../support/server.mjs';
import { WEBRTC_ARGS, setup, waitIn, withDiagnostics } from './harness.mjs';

let env;
before(async () => { env = await setup({ args: WEBRTC_ARGS }); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

/** In the page: connect, get the fake camera, join, and record the room's calls and tracks. */
async function joinCall(page, { url, token, transport, room, name, callAll }) {
  return page.evaluate(async ({ url, token, transport, room, name, callAll }) => {
    T.start('rtc', url, { token, transports: [transport] });
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: true });
    const r = await T.client('rtc').joinRoom(room, { meta: { name } });
    const seen = (window.rtc = { tracks: [], calls: [], closed: [], left: [], room: r });
    r.on('call', (call) => {
      seen.calls.push(call.peer);
      call.on('close', () => seen.closed.push(call.peer));
    });
    r.on('track', ({ peer, track }) => seen.tracks.push(`${peer}:${track.kind}`));
    r.on('peer_left', (id) => seen.left.push(id));
    r.setLocalStream(stream);
    if (callAll) r.callAll();
    return r.peer;
  }, { url, token, transport, room, name, callAll });
}

const decoded = (page, peer) => page.evaluate(async (p) => {
  const call = window.rtc.room.calls.get(p);
  if (!call) return null;
  let frames = 0;
  (await call.pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
  });
  return { frames, state: call.pc.connectionState };
}, peer);

test('two pages call each other through the helper (WebSocket and SSE signalling) and decode each other\'s video', { timeout: 40_000 }, async () => {
  const a = await env.page('a');
  const b = await env.page('b');
  await withDiagnostics(env, async () => {
    const room = uniq('call');
    const idA = await joinCall(a, { url: env.sb.url, token: env.sb.token(uniq('ann')), transport: 'websocket', room, name: 'Ann', callAll: false });
    const idB = await joinCall(b, { url: env.sb.url, token: env.sb.token(uniq('bob')), transport: 'sse', room, name: 'Bob', callAll: true });
    for (const [page, other] of [[a, idB], [b, idA]]) {
      await waitIn(page, async (p) => (await window.rtc.room.calls.get(p)?.pc.getStats()) && window.rtc.room.calls.get(p).pc.connectionState === 'connected', other,
        { timeout: 15_000, what: 'the call to be connected' });
    }
    const before = { a: await decoded(a, idB), b: await decoded(b, idA) };
    await sleep(2000);
    const now = { a: await decoded(a, idB), b: await decoded(b, idA) };
    for (const side of ['a', 'b']) {
      const gained = now[side].frames - before[side].frames;
      console.log(`# ${side}: ${gained} video frames decoded in 2 s`);
      assert.ok(gained >= 10, `${side} decodes the other's video steadily (${before[side].frames} -> ${now[side].frames})`);
    }
    const seenA = await a.evaluate(() => ({ calls: window.rtc.calls, tracks: window.rtc.tracks }));
    assert.deepEqual(seenA.calls, [idB], 'Ann answered Bob\'s call by herself');
    assert.deepEqual(new Set(seenA.tracks), new Set([`${idB}:audio`, `${idB}:video`]));

    // Bob leaves: Ann gets peer_left and her call ends.
    await b.evaluate(() => window.rtc.room.leave());
    await waitIn(a, (p) => window.rtc.left.includes(p) && window.rtc.closed.includes(p) && !window.rtc.room.calls.has(p), idB,
      { what: 'peer_left and the call closed' });
  });
  await a.context().close();
  await b.context().close();
});
