// Server-Sent Events from a real browser: a plain EventSource over two channels, a server-side
// disconnect in the middle with messages published while the browser is away, and the
// browser's own reconnect (Last-Event-ID) resuming both channels with nothing lost or repeated.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  assertExactlyOnce, framesOfType, messagesOf, publishRound, publishedCount,
  settle, setup, subscribedAfterConnect, uniq, waitForPage, withDiagnostics,
} from './harness.mjs';

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

test('SSE: EventSource gets every message of two channels exactly once, in order, across a server disconnect', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page, pages } = env;
    const user = uniq('sse-user');
    const [a, b] = [uniq('sse-a'), uniq('sse-b')];
    const url = `${sb.url}/sse?channel=${a}&channel=${b}&token=${sb.token(user)}`;

    // What the browser itself sends and gets: the reconnect's Last-Event-ID, the CORS header.
    const requests = [];
    const responses = [];
    page.on('request', (r) => { if (r.url().startsWith(`${sb.url}/sse`)) requests.push(r); });
    page.on('response', (r) => { if (r.url().startsWith(`${sb.url}/sse`)) responses.push(r); });

    await page.evaluate((u) => window.sb.startSse('sse', u), url);
    let st = await waitForPage(page, 'sse', (s) => framesOfType(s, 'subscribed').length >= 2, {
      timeout: 5000, what: 'connected and one subscribed frame per channel',
    });
    const connected = st.frames[0]?.frame;
    assert.equal(connected?.type, 'connected', 'the first frame is connected');
    assert.equal(connected.user, user);
    assert.equal(typeof connected.client, 'string');
    assert.equal(typeof connected.session, 'string', 'connected carries a session on SSE');
    assert.deepEqual(new Set(subscribedAfterConnect(st, 0).map((f) => f.channel)), new Set([a, b]));
    assert.equal(responses[0]?.status(), 200);
    const headers = await responses[0].allHeaders();
    assert.match(headers['content-type'] || '', /^text\/event-stream/);
    assert.equal(headers['access-control-allow-origin'], pages.origin, 'CORS header for the page\'s origin');

    const published = new Map([[a, []], [b, []]]);
    await publishRound(sb, published, [a, b], 4, 'live');
    st = await waitForPage(page, 'sse', (s) => messagesOf(s).length >= 8, { timeout: 5000, what: 'the first 8 messages' });

    // The server closes the stream; publish at once, while the browser waits its retry delay.
    const lastIdBefore = st.frames.filter((r) => r.frame.type === 'message').at(-1).id;
    const { disconnected } = await sb.disconnect(user);
    assert.equal(disconnected, 1, '/api/disconnect closed the one SSE connection of the user');
    const gap = await publishRound(sb, published, [a, b], 4, 'gap');

    st = await waitForPage(page, 'sse', (s) => framesOfType(s, 'connected').length >= 2 && messagesOf(s).length >= 16, {
      timeout: 12_000, what: 'the browser to reconnect by itself and get the 8 messages published during the gap',
    });
    const reconnectedAt = framesOfType(st, 'connected')[1].t;
    assert.ok(
      reconnectedAt > gap.firstDoneAt,
      `messages were published while the browser was away (reconnected ${reconnectedAt - gap.firstDoneAt} ms after the first gap publish)`,
    );

    await publishRound(sb, published, [a, b], 3, 'after');
    await waitForPage(page, 'sse', (s) => messagesOf(s).length >= publishedCount(published), {
      timeout: 5000, what: 'the messages published after the reconnect',
    });
    st = await settle(page, 'sse');

    assertExactlyOnce(assert, st, published);
    for (const r of st.frames.filter((x) => x.frame.type === 'message')) {
      assert.equal(r.id, r.frame.cursor, `SSE id: of ${r.frame.channel}#${r.frame.offset} is its cursor`);
    }
    assert.ok(framesOfType(st, 'connected').length >= 2, 'the page saw at least two connected frames');
    const resumed = subscribedAfterConnect(st, 1);
    for (const channel of [a, b]) {
      const s = resumed.find((f) => f.channel === channel);
      assert.ok(s, `a subscribed frame for ${channel} after the reconnect`);
      assert.equal(s.recovered, true, `the reconnect recovered ${channel}: ${JSON.stringify(s)}`);
    }
    assert.ok(requests.length >= 2, `the browser reconnected (${requests.length} requests to /sse)`);
    const resumeHeaders = await requests[1].allHeaders();
    assert.equal(resumeHeaders['last-event-id'], lastIdBefore, 'the reconnect sent the last event id it had');
    assert.deepEqual(st.bad, [], 'every event was JSON');
  }));

test('SSE: the wire starts with retry:, events are data-only and carry id: = cursor', { timeout: 10_000 }, () =>
  withDiagnostics(env, async () => {
    // Read as bytes from Node: the browser does not show the retry: field or event names.
    const { sb } = env;
    const user = uniq('sse-wire');
    const channel = uniq('sse-w');
    const ac = new AbortController();
    const res = await fetch(`${sb.url}/sse?channel=${channel}&token=${sb.token(user)}`, { signal: ac.signal });
    assert.equal(res.status, 200);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    const readUntil = async (pred, what) => {
      const deadline = Date.now() + 5000;
      while (!pred(text)) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`timed out waiting for ${what}; got so far:\n${text}`);
        const chunk = await Promise.race([reader.read(), new Promise((r) => setTimeout(() => r({ timeout: true }), left))]);
        if (chunk.done) throw new Error(`stream ended before ${what}; got:\n${text}`);
        if (chunk.value) text += chunk.value;
      }
    };
    await readUntil((t) => t.includes('"subscribed"') && t.includes('\n\n'), 'connected and subscribed');
    const answer = await sb.publish(channel, { hello: 'wire' });
    const eventEnd = (t) => { const i = t.indexOf('"message"'); return i >= 0 && /\r?\n\r?\n/.test(t.slice(i)); };
    await readUntil(eventEnd, 'the message event');
    ac.abort();

    assert.match(text, /^retry: *\d+\r?\n/, 'the first line is retry: <ms>');
    const events = text.split(/\r?\n\r?\n/).filter((e) => e.trim() && !e.split(/\r?\n/).every((l) => l.startsWith(':') || l.startsWith('retry:')));
    for (const ev of events) {
      assert.ok(!/^event:/m.test(ev), `no event: line (EventSource.onmessage must see every frame): ${ev}`);
    }
    const msg = events.find((ev) => ev.includes('"message"'));
    const data = JSON.parse(msg.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n'));
    assert.equal(data.offset, answer.offset);
    assert.deepEqual(data.data, { hello: 'wire' });
    const id = msg.split(/\r?\n/).find((l) => l.startsWith('id:'));
    assert.ok(id, `the message event has an id: line: ${msg}`);
    assert.equal(id.slice(3).replace(/^ /, ''), data.cursor, 'id: is the frame\'s cursor');
  }));
