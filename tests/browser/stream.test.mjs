// HTTP streaming (NDJSON) from a real browser: fetch() with a reader that splits lines, a
// server-side disconnect in the middle with messages published while the page is away, and the
// page's own reconnect with ?cursor= resuming both channels with nothing lost or repeated.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  assertExactlyOnce, framesOfType, messagesOf, publishRound, publishedCount,
  settle, setup, subscribedAfterConnect, uniq, waitForPage, withDiagnostics,
} from './harness.mjs';

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

test('stream: fetch() NDJSON gets every message of two channels exactly once, in order, across a server disconnect', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page, pages } = env;
    const user = uniq('stream-user');
    const [a, b] = [uniq('stream-a'), uniq('stream-b')];
    const url = `${sb.url}/stream?channel=${a}&channel=${b}&token=${sb.token(user)}`;
    const responses = [];
    page.on('response', (r) => { if (r.url().startsWith(`${sb.url}/stream`)) responses.push(r); });

    // The page waits 700 ms before reconnecting: the gap in which the test publishes.
    await page.evaluate((u) => window.sb.startStream('stream', u, { reconnectDelay: 700 }), url);
    let st = await waitForPage(page, 'stream', (s) => framesOfType(s, 'subscribed').length >= 2 || s.requests.some((r) => r.end), {
      timeout: 5000, what: 'connected and one subscribed frame per channel',
    });
    assert.equal(st.requests[0].status, 200, `GET /stream answered ${st.requests[0].status} ${st.requests[0].body || st.requests[0].how || ''}`);
    assert.match(st.requests[0].contentType || '', /^application\/x-ndjson/);
    const headers = await responses[0].allHeaders();
    assert.equal(headers['access-control-allow-origin'], pages.origin, 'CORS header for the page\'s origin');
    const connected = st.frames[0]?.frame;
    assert.equal(connected?.type, 'connected', 'the first frame is connected');
    assert.equal(connected.user, user);
    assert.equal(typeof connected.session, 'string', 'connected carries a session on HTTP streaming');
    assert.deepEqual(new Set(subscribedAfterConnect(st, 0).map((f) => f.channel)), new Set([a, b]));

    const published = new Map([[a, []], [b, []]]);
    await publishRound(sb, published, [a, b], 4, 'live');
    st = await waitForPage(page, 'stream', (s) => messagesOf(s).length >= 8, { timeout: 5000, what: 'the first 8 messages' });
    const cursorBefore = st.cursor;

    const { disconnected } = await sb.disconnect(user);
    assert.equal(disconnected, 1, '/api/disconnect closed the one streaming connection of the user');
    const gap = await publishRound(sb, published, [a, b], 4, 'gap');

    st = await waitForPage(page, 'stream', (s) => framesOfType(s, 'connected').length >= 2 && messagesOf(s).length >= 16, {
      timeout: 10_000, what: 'the page to reconnect with its cursor and get the 8 messages published during the gap',
    });
    assert.ok(st.requests[0].end, 'the first stream ended after /api/disconnect');
    assert.ok(
      st.requests[1].start > gap.firstDoneAt,
      `messages were published while the page was away (it reconnected ${st.requests[1].start - gap.firstDoneAt} ms after the first gap publish)`,
    );
    assert.equal(new URL(st.requests[1].url).searchParams.get('cursor'), cursorBefore, 'the page resumed from the last cursor it saw');

    await publishRound(sb, published, [a, b], 3, 'after');
    await waitForPage(page, 'stream', (s) => messagesOf(s).length >= publishedCount(published), {
      timeout: 5000, what: 'the messages published after the reconnect',
    });
    st = await settle(page, 'stream');

    assertExactlyOnce(assert, st, published);
    assert.ok(framesOfType(st, 'connected').length >= 2, 'the page saw at least two connected frames');
    const resumed = subscribedAfterConnect(st, 1);
    for (const channel of [a, b]) {
      const s = resumed.find((f) => f.channel === channel);
      assert.ok(s, `a subscribed frame for ${channel} after the reconnect`);
      assert.equal(s.recovered, true, `the reconnect recovered ${channel}: ${JSON.stringify(s)}`);
    }
    assert.equal(st.requests[1].status, 200);
    assert.deepEqual(st.bad, [], 'every line was JSON');
    assert.ok(st.requests.every((r) => !r.unterminated), 'no stream ended in the middle of a line');
  }));
