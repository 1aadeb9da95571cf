// WebRTC as users will do it: two Chromium pages open the server's own demo page
// (`GET /demo/call`), join one room with tokens carrying a `rooms` claim, signal through it, and
// must decode each other's (fake) camera: inbound-rtp video `framesDecoded` above zero and rising.
// Directly over loopback, relay-only through the embedded TURN server, and relay-only through a
// real coturn with credentials handed out by `join_room`. Closing one page must give the other
// `peer_left`.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  WEBRTC_ARGS, haveCoturn, launchBrowser, startCoturn, startServer, uniq,
} from './harness.mjs';

const TURN_SECRET = 'browser-turn-secret-0123456789abcdef-0123456789';

let browser;
before(async () => { browser = await launchBrowser({ args: WEBRTC_ARGS }); }, { timeout: 30_000 });
after(async () => { await browser?.close(); });

/** A token for `user` that may join any `call:*` room. */
const callToken = (sb, user) => sb.token(user, { extra: { rooms: ['call:*'] } });

/**
 * Polls `fn(arg)` in `page` until it answers something truthy; fails after `timeout` ms naming
 * `what`. Answers what `fn` answered.
 */
async function waitIn(page, fn, arg, { timeout = 10_000, what }) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

const inboundVideo = (page, peer) => page.evaluate((p) => window.demo.inboundVideo(p), peer);
const selectedPair = (page, peer) => page.evaluate((p) => window.demo.selectedPair(p), peer);

/**
 * The call: alice opens the page and joins, then bob; each must end up connected to the other
 * and decoding the other's video, with the numbers rising over two seconds. `check(pair, who)`
 * looks at the selected candidate pair of each side. Then bob closes his page and alice must
 * get `peer_left` and drop his video.
 */
async function twoPageCall({ sb, relay, expectIceUrl, checkPair, extraDiag = () => '' }) {
  const context = await browser.newContext();
  const room = `call:${uniq('room')}`;
  const consoleLines = [];
  const pages = {};
  const openPage = async (who) => {
    const page = await context.newPage();
    page.on('console', (m) => consoleLines.push(`[${who}] [${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`[${who}] [pageerror] ${e.message}`));
    const url = `${sb.url}/demo/call?room=${encodeURIComponent(room)}&name=${who}` +
      `&token=${encodeURIComponent(callToken(sb, uniq(who)))}${relay ? '&relay=1' : ''}`;
    const res = await page.goto(url, { timeout: 10_000 });
    assert.equal(res.status(), 200, `GET /demo/call answered ${res.status()}`);
    assert.match(res.headers()['content-type'] || '', /^text\/html/);
    pages[who] = page;
    await waitIn(page, () => window.demo?.state === 'joined' || window.demo?.state === 'failed', null,
      { timeout: 10_000, what: `${who} to join ${room}` });
    const snap = await page.evaluate(() => window.demo.snapshot());
    assert.equal(snap.state, 'joined', `${who} joined: ${JSON.stringify(snap)}`);
    assert.deepEqual([...snap.local].sort(), ['audio:live', 'video:live'], `${who} has the fake camera and microphone`);
    if (expectIceUrl) {
      assert.ok(snap.iceServers.flat().includes(expectIceUrl),
        `join_room handed ${who} the TURN server ${expectIceUrl}; got ${JSON.stringify(snap.iceServers)}`);
    }
    return { page, id: snap.selfId };
  };

  const started = Date.now();
  try {
    const alice = await openPage('alice');
    const bob = await openPage('bob');
    const sides = [['alice', alice, bob], ['bob', bob, alice]];

    for (const [who, me, other] of sides) {
      await waitIn(me.page, (p) => window.demo.peers.get(p)?.connectionState === 'connected', other.id,
        { timeout: 15_000, what: `${who}'s connection to the other page to be 'connected'` });
    }
    for (const [who, me, other] of sides) {
      await waitIn(me.page, async (p) => (await window.demo.inboundVideo(p))?.framesDecoded > 0, other.id,
        { timeout: 10_000, what: `${who} to decode a first video frame of the other page` });
    }
    const before = {};
    for (const [who, me, other] of sides) before[who] = await inboundVideo(me.page, other.id);
    await sleep(2000);
    for (const [who, me, other] of sides) {
      const now = await inboundVideo(me.page, other.id);
      const gained = now.framesDecoded - before[who].framesDecoded;
      assert.ok(gained >= 10,
        `${who} decodes the other page's video steadily: framesDecoded ${before[who].framesDecoded} -> ${now.framesDecoded} over 2 s (${JSON.stringify(now)})`);
      assert.ok(now.bytesReceived > before[who].bytesReceived, `${who} keeps receiving video bytes`);
      assert.ok(now.frameWidth > 0 && now.frameHeight > 0, `${who} knows the decoded frame size: ${JSON.stringify(now)}`);
      const pair = await selectedPair(me.page, other.id);
      assert.ok(pair && pair.local && pair.remote, `${who} has a selected candidate pair: ${JSON.stringify(pair)}`);
      checkPair(pair, who);
      console.log(`# ${who}: ${gained} frames decoded in 2 s (${now.frameWidth}x${now.frameHeight}), ` +
        `path ${pair.local.type}/${pair.local.protocol} ${pair.local.address}:${pair.local.port} -> ` +
        `${pair.remote.type} ${pair.remote.address}:${pair.remote.port}${pair.local.url ? ` via ${pair.local.url}` : ''}`);
    }

    // Bob leaves by closing his tab: alice gets peer_left and drops his video.
    await bob.page.close();
    delete pages.bob;
    await waitIn(alice.page, (p) => window.demo.peerLeft.includes(p), bob.id,
      { timeout: 10_000, what: "alice to get peer_left for bob's page" });
    const after = await alice.page.evaluate((p) => ({
      pc: window.demo.peers.has(p),
      tile: !!document.querySelector(`[data-peer="${CSS.escape(p)}"]`),
    }), bob.id);
    assert.deepEqual(after, { pc: false, tile: false }, "alice dropped bob's connection and video");
    console.log(`# call took ${Date.now() - started} ms`);
  } catch (e) {
    const snaps = [];
    for (const [who, page] of Object.entries(pages)) {
      const snap = await page.evaluate(() => window.demo?.snapshot()).catch((err) => `(${err.message})`);
      snaps.push(`${who}: ${JSON.stringify(snap, null, 1)}`);
    }
    e.stack += `\n--- pages ---\n${snaps.join('\n')}` +
      `\n--- page console (tail) ---\n${consoleLines.slice(-40).join('\n')}` +
      `\n--- server output (tail) ---\n${sb.output().split('\n').slice(-40).join('\n')}${extraDiag()}`;
    throw e;
  } finally {
    await context.close().catch(() => {});
  }
}

const isRelay = (pair) => pair.local.type === 'relay' || pair.remote.type === 'relay';

test('two pages call each other directly and decode each other\'s video; closing one gives peer_left', { timeout: 40_000 }, async () => {
  const sb = await startServer({ extraToml: '[webrtc]\nmax_room_peers = 4\n' });
  try {
    await twoPageCall({
      sb,
      relay: false,
      checkPair: (pair, who) => assert.ok(!isRelay(pair), `${who}'s path is direct: ${JSON.stringify(pair)}`),
    });
  } finally {
    await sb.stop();
  }
});

test('relay only, through the embedded TURN server', { timeout: 40_000 }, async () => {
  let turnPort;
  const sb = await startServer({
    extraToml: ({ udpPort }) => {
      turnPort = udpPort;
      return [
        '[webrtc]',
        'max_room_peers = 4',
        `turn_secret = "${TURN_SECRET}"`,
        '',
        '[webrtc.turn]',
        `listen = "127.0.0.1:${udpPort}"`,
        'realm = "switchboard"',
        'public_ip = "127.0.0.1"',
        'allow_loopback_peers = true',
      ].join('\n');
    },
  });
  try {
    const turnUrl = `turn:127.0.0.1:${turnPort}?transport=udp`;
    await twoPageCall({
      sb,
      relay: true,
      expectIceUrl: turnUrl,
      checkPair: (pair, who) => {
        assert.ok(isRelay(pair), `${who}'s selected pair goes through TURN: ${JSON.stringify(pair)}`);
        if (pair.local.type === 'relay') {
          assert.equal(pair.local.address, '127.0.0.1', `${who}'s relay address is the embedded server's`);
          if (pair.local.url) assert.equal(pair.local.url, turnUrl, `${who} relays through the embedded server`);
        }
      },
    });
  } finally {
    await sb.stop();
  }
});

test('relay only, through coturn with credentials from join_room', { timeout: 40_000, skip: haveCoturn() ? false : 'coturn (turnserver) is not installed' }, async () => {
  const coturn = await startCoturn({ secret: TURN_SECRET });
  let sb;
  try {
    sb = await startServer({
      extraToml: [
        '[webrtc]',
        'max_room_peers = 4',
        `turn_urls = ["${coturn.url}"]`,
        `turn_secret = "${TURN_SECRET}"`,
      ].join('\n'),
    });
    await twoPageCall({
      sb,
      relay: true,
      expectIceUrl: coturn.url,
      checkPair: (pair, who) => {
        assert.ok(isRelay(pair), `${who}'s selected pair goes through TURN: ${JSON.stringify(pair)}`);
        if (pair.local.type === 'relay' && pair.local.url) {
          assert.equal(pair.local.url, coturn.url, `${who} relays through coturn`);
        }
      },
      extraDiag: () => `\n--- coturn output (tail) ---\n${coturn.output().split('\n').slice(-30).join('\n')}`,
    });
  } finally {
    await sb?.stop();
    await coturn.stop();
  }
});
