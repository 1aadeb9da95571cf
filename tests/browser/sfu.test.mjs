// SFU rooms (spec §9) as users meet them: three Chromium tabs open the server's own
// /demo/call page in SFU mode (fake camera and microphone). Each sends its media once, on its
// one peer connection to the server, and must decode both other members' video
// (`framesDecoded` rising on every inbound video track). When one leaves, the server stops
// its tracks at the others (their m-lines renegotiated away) and their frames from it stop.
// Then the same with every tab relay-only through the embedded TURN server, and a member that
// publishes its camera only after joining (its own offer, answered by the SFU).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { WEBRTC_ARGS, launchBrowser, startServer, uniq } from './harness.mjs';

let browser;
before(async () => {
  browser = await launchBrowser({ args: WEBRTC_ARGS });
}, { timeout: 40_000 });
after(async () => {
  await browser?.close();
});

async function waitFor(what, fn, { timeout = 20_000 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(200);
  }
}

const metric = async (sb, name) => {
  const text = await (await fetch(`${sb.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
};

/** Opens the call page in SFU mode as `name`; waits until it joined. */
async function member(context, sb, room, name, lines, { relay = false } = {}) {
  const page = await context.newPage();
  page.on('console', (m) => lines.push(`[${name}] ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[${name}] [pageerror] ${e.message}`));
  const token = sb.token(uniq(name), { extra: { rooms: ['call:*'] } });
  const url = `${sb.url}/demo/call?mode=sfu&room=${encodeURIComponent(room)}&name=${name}`
    + `&token=${encodeURIComponent(token)}${relay ? '&relay=1' : ''}`;
  const res = await page.goto(url, { timeout: 10_000 });
  assert.equal(res.status(), 200);
  const state = await waitFor(`${name} to join`, () => page.evaluate(() => (window.demo.state === 'joined' || window.demo.error) && window.demo.state), { timeout: 30_000 });
  assert.equal(state, 'joined', await page.evaluate(() => JSON.stringify(window.demo.snapshot())));
  const id = await page.evaluate(() => window.demo.selfId);
  return { page, name, id };
}

const framesFrom = (m, peer) => m.page.evaluate(async (p) => (await window.demo.inboundVideo(p))?.framesDecoded ?? 0, peer);

/** Every member decodes every other member's video, and it keeps rising. */
async function everyoneSeesEveryone(members) {
  for (const m of members) {
    for (const other of members.filter((o) => o !== m)) {
      const first = await waitFor(`${m.name} to decode ${other.name}'s video`, () => framesFrom(m, other.id), { timeout: 30_000 });
      await sleep(2000);
      const later = await framesFrom(m, other.id);
      assert.ok(later > first + 3, `${m.name}'s frames from ${other.name} must keep rising: ${first} then ${later}`);
    }
  }
}

/** One video goes up from each member, whatever the room's size. */
async function sendsOnce(m) {
  const up = await m.page.evaluate(async () => {
    const stats = await window.demo.sfu.pc.getStats();
    let video = 0;
    stats.forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video' && !s.rid) video++; });
    return { video, peerConnections: 1 };
  });
  assert.equal(up.video, 1, `${m.name} sends one video upstream: ${JSON.stringify(up)}`);
}

async function threeInARoom(sb, { relay = false } = {}) {
  const context = await browser.newContext();
  const lines = [];
  const room = `call:${uniq('sfu')}`;
  try {
    const members = [];
    for (const name of ['ann', 'ben', 'cat']) members.push(await member(context, sb, room, name, lines, { relay }));
    await everyoneSeesEveryone(members);
    for (const m of members) await sendsOnce(m);
    if (relay) {
      for (const m of members) {
        const pair = await m.page.evaluate((p) => window.demo.selectedPair(p), members.find((o) => o !== m).id);
        assert.equal(pair?.local?.type, 'relay', `${m.name} reaches the SFU through TURN: ${JSON.stringify(pair)}`);
      }
    }
    assert.equal(await metric(sb, 'switchboard_media_tracks'), 6, 'three members, audio and video each');
    // The server API names the node that holds the room's media.
    const described = await sb.api('GET', `/api/rooms/${encodeURIComponent(room)}`);
    assert.equal(described.peers.length, 3, JSON.stringify(described));
    assert.equal(described.media.length, 1, JSON.stringify(described));
    assert.equal(described.media[0].peers, 3, JSON.stringify(described));
    // WHEP plays one member of the room, named by its room peer id.
    const watcher = await context.newPage();
    const watchToken = sb.token(uniq('eye'), { extra: { rooms: ['call:*'] } });
    await watcher.goto(`${sb.url}/demo/whep?room=${encodeURIComponent(room)}&peer=${members[0].id}&token=${encodeURIComponent(watchToken)}`);
    const watched = await waitFor('a WHEP viewer decoding ann', () => watcher.evaluate(() => window.whep.error || window.whep.framesDecoded()), { timeout: 30_000 });
    assert.equal(typeof watched, 'number', String(watched));
    await watcher.close();

    // Cat leaves: the others see peer_left, the SFU stops cat's tracks at them, and their
    // frames from cat stop.
    const [ann, ben, cat] = members;
    await cat.page.evaluate(() => window.demo.leave());
    for (const m of [ann, ben]) {
      await waitFor(`${m.name} to see cat leave`, () => m.page.evaluate((id) => window.demo.peerLeft.includes(id), cat.id));
      await waitFor(`cat's tracks to stop at ${m.name}`, () => m.page.evaluate((id) => window.demo.sfu.receivers(id, 'video').length === 0
        && window.demo.sfu.receivers(id, 'audio').length === 0, cat.id));
      // Stopped transceivers leave getTransceivers() once negotiated; cat's tracks end.
      const lines = await m.page.evaluate((id) => window.demo.sfu.pc.getTransceivers()
        .filter((t) => window.demo.sfu.streamOf(t) === id).map((t) => t.currentDirection), cat.id);
      assert.ok(lines.every((d) => d === 'stopped' || d === 'inactive'), `cat's m-lines at ${m.name}: ${lines}`);
      const tracks = await m.page.evaluate((id) => window.demo.sfu.tracksOf(id).map((t) => `${t.kind}:${t.readyState}`).sort(), cat.id);
      assert.deepEqual(tracks, ['audio:ended', 'video:ended'], `cat's tracks at ${m.name}`);
    }
    await waitFor('cat\'s tracks to leave the server', async () => await metric(sb, 'switchboard_media_tracks') === 4);
    // Ann and Ben go on seeing each other.
    await everyoneSeesEveryone([ann, ben]);
  } catch (e) {
    e.message += `\n--- pages ---\n${lines.slice(-60).join('\n')}\n--- server ---\n${sb.output?.().slice(-4000) ?? ''}`;
    throw e;
  } finally {
    await context.close();
  }
}

test('three tabs in one SFU room: each decodes both others; a member leaving stops its tracks', { timeout: 120_000 }, async () => {
  const sb = await startServer();
  try {
    await threeInARoom(sb);
  } finally {
    await sb.stop();
  }
});

test('the same with every tab relay-only through the embedded TURN server', { timeout: 120_000 }, async () => {
  const TURN_SECRET = 'sfu-turn-secret-0123456789abcdef-0123456789';
  const sb = await startServer({
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
  try {
    await threeInARoom(sb, { relay: true });
  } finally {
    await sb.stop();
  }
});

test('a member that starts its camera after joining offers it itself; refusals are clear', { timeout: 90_000 }, async () => {
  const sb = await startServer({ extraToml: '[webrtc.media]\nmax_publishers = 2\n' });
  const context = await browser.newContext();
  const lines = [];
  const room = `call:${uniq('late')}`;
  try {
    const ann = await member(context, sb, room, 'ann', lines);
    // Ben joins with no media, then adds his camera: his own offer on the data channel.
    const page = await context.newPage();
    page.on('console', (m) => lines.push(`[ben] ${m.text()}`));
    await page.goto(`${sb.url}/health`);
    const token = sb.token(uniq('ben'), { extra: { rooms: ['call:*'] } });
    const benId = await page.evaluate(async ({ room, token }) => {
      const { SfuMember } = await import('/demo/sfu.js');
      const sfu = window.sfu = new SfuMember({ room, token, log: (...a) => console.log(...a) });
      await sfu.join(null);
      return sfu.peer;
    }, { room, token });
    await page.evaluate(async () => {
      const stream = await navigator.mediaDevices.getUserMedia({ video: true });
      await window.sfu.addTrack(stream.getVideoTracks()[0], stream);
    });
    await waitFor('ann to decode ben\'s late camera', () => framesFrom(ann, benId), { timeout: 30_000 });

    // A third member is past max_publishers: refused before joining, nobody sees it.
    const refused = await page.evaluate(async ({ room, token }) => {
      const { SfuMember } = await import('/demo/sfu.js');
      const sfu = new SfuMember({ room, token });
      try {
        await sfu.join(null);
        return null;
      } catch (e) {
        return { code: e.code, message: e.message };
      } finally {
        sfu.pc.close();
      }
    }, { room, token: sb.token(uniq('cat'), { extra: { rooms: ['call:*'] } }) });
    assert.equal(refused?.code, 'unavailable', JSON.stringify(refused));
    assert.match(refused.message, /max_publishers/);
    assert.deepEqual(await ann.page.evaluate(() => window.demo.peerJoined.length), 1, 'only ben was seen joining');

    // Garbage to "sfu" is refused; a second SFU room on one connection too.
    const errors = await page.evaluate(async ({ room }) => {
      const out = [];
      for (const data of [{ sdp: { type: 'answer', sdp: 'v=0' } }, { sdp: { type: 'offer', sdp: 'garbage' } }, { nothing: 1 }]) {
        try {
          await window.sfu.signal(data);
          out.push(null);
        } catch (e) {
          out.push(e.code);
        }
      }
      try {
        await window.sfu.command({ type: 'join_room', room: `${room}-2`, media: 'sfu' });
        out.push(null);
      } catch (e) {
        out.push(e.code);
      }
      return out;
    }, { room });
    assert.deepEqual(errors, ['bad_request', 'bad_request', 'bad_request', 'bad_request']);
    // Ben's link still works after the refusals: ann keeps decoding him.
    const before = await framesFrom(ann, benId);
    await sleep(1500);
    assert.ok(await framesFrom(ann, benId) > before + 5, 'ben\'s video goes on');
  } catch (e) {
    e.message += `\n--- pages ---\n${lines.slice(-60).join('\n')}\n--- server ---\n${sb.output?.().slice(-4000) ?? ''}`;
    throw e;
  } finally {
    await context.close();
    await sb.stop();
  }
});

test('in a cluster, /api/rooms/<room> on any node names the node holding the room\'s media', { timeout: 60_000 }, async () => {
  const prefix = uniq('sfu-cluster').replace(/[^A-Za-z0-9_-]/g, '_');
  const engine = (name) => `[engine]\nkind = "redis"\nredis_url = "redis://127.0.0.1:6379"\nprefix = "${prefix}"\nnode_name = "${name}"\n`;
  const a = await startServer({ extraToml: engine('node-a') });
  const b = await startServer({ extraToml: engine('node-b') });
  const context = await browser.newContext();
  try {
    const room = `call:${uniq('where')}`;
    const token = a.token(uniq('cam'), { extra: { rooms: ['call:*'] } });
    const page = await context.newPage();
    await page.goto(`${a.url}/demo/whip?room=${encodeURIComponent(room)}&token=${encodeURIComponent(token)}`);
    await waitFor('the publisher on node a', () => page.evaluate(() => window.whip.error || window.whip.pc?.connectionState === 'connected'), { timeout: 30_000 });
    const info = await a.api('GET', '/api/info');
    const nodeA = info.nodes.find((n) => n.name === 'node-a');
    assert.ok(nodeA, JSON.stringify(info.nodes));
    for (const node of [a, b]) {
      const described = await node.api('GET', `/api/rooms/${encodeURIComponent(room)}`);
      assert.deepEqual(described.media, [{ node: nodeA.id, name: 'node-a', peers: 1 }], JSON.stringify(described));
    }
    const empty = await b.api('GET', `/api/rooms/${encodeURIComponent(`${room}-none`)}`);
    assert.deepEqual(empty, { peers: [] }, 'a room with no media answers as before');
  } finally {
    await context.close();
    await a.stop();
    await b.stop();
  }
});
