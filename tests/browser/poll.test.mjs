// Long polling from a real browser: the page loops fetch('/poll?...&cursor=...'). Messages are
// published while a poll is waiting (it must answer at once) and between polls (the next poll
// must answer at once with them); a poll with nothing to say answers an empty list after its
// timeout. Every message of both channels arrives exactly once, in order.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  assertExactlyOnce, messagesOf, publishRound, publishedCount,
  settle, setup, uniq, waitForPage, withDiagnostics,
} from './harness.mjs';

const POLL_TIMEOUT = 5; // seconds, as ?timeout=

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

/** The page's poll in flight that has been waiting at least `ms`, started after `since`. */
const waitingPoll = (ms, since = 0) => (s) =>
  s.inflight !== null && s.polls[s.inflight].start >= since && Date.now() - s.polls[s.inflight].start >= ms;

test('poll: a fetch() loop gets every message of two channels exactly once, in order, published during and between polls', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page, pages } = env;
    const user = uniq('poll-user');
    const [a, b] = [uniq('poll-a'), uniq('poll-b')];
    const url = `${sb.url}/poll?channel=${a}&channel=${b}&token=${sb.token(user)}`;
    const responses = [];
    page.on('response', (r) => { if (r.url().startsWith(`${sb.url}/poll`)) responses.push(r); });

    // 1. The first poll, without a cursor, answers at once and starts with connected.
    await page.evaluate(([u, t]) => window.sb.startPoll('poll', u, { timeout: t }), [url, POLL_TIMEOUT]);
    let st = await waitForPage(page, 'poll', (s) => s.polls.length >= 1 && s.polls[0].end, { timeout: 5000, what: 'the first poll\'s answer' });
    const first = st.polls[0];
    assert.equal(first.status, 200, `the first poll answered ${first.status} ${first.body || first.error || ''}`);
    assert.match(first.contentType || '', /^application\/json/);
    assert.ok(first.end - first.start < 2000, `the first poll answered at once (${first.end - first.start} ms)`);
    assert.equal(first.withCursor, false);
    assert.equal(typeof first.cursor, 'string', 'the poll answer carries a cursor');
    const connected = st.frames[0]?.frame;
    assert.equal(connected?.type, 'connected', `the first poll's messages start with connected: ${JSON.stringify(first.types)}`);
    assert.equal(connected.user, user);
    const headers = await responses[0].allHeaders();
    assert.equal(headers['access-control-allow-origin'], pages.origin, 'CORS header for the page\'s origin');

    // 2. Published while a poll waits: that poll answers at once, not at its timeout.
    const published = new Map([[a, []], [b, []]]);
    st = await waitForPage(page, 'poll', waitingPoll(300), { timeout: 5000, what: 'a poll to be waiting' });
    const waiting = st.inflight;
    const publishAt = Date.now();
    await publishRound(sb, published, [a, b], 3, 'during');
    st = await waitForPage(page, 'poll', (s) => messagesOf(s).length >= 6, { timeout: 5000, what: 'the 6 messages published during a poll' });
    const answered = st.polls[waiting];
    assert.ok(answered.count >= 1, `the waiting poll answered with messages: ${JSON.stringify(answered)}`);
    assert.ok(answered.end - publishAt < 2000, `the waiting poll answered ${answered.end - publishAt} ms after the publish (timeout ${POLL_TIMEOUT} s)`);

    // 3. Nothing to say: the next poll answers an empty list after its timeout. The page then
    //    holds before polling again, and what is published meanwhile waits for the next poll.
    const lastMessageAt = st.frames.at(-1).t;
    st = await waitForPage(page, 'poll', waitingPoll(0, lastMessageAt), { timeout: 5000, what: 'a poll after the messages' });
    const idle = st.inflight;
    await page.evaluate(() => window.sb.setPoll('poll', { hold: true }));
    st = await waitForPage(page, 'poll', (s) => s.held, { timeout: POLL_TIMEOUT * 1000 + 3000, what: 'the idle poll to time out' });
    const idlePoll = st.polls[idle];
    assert.equal(idlePoll.status, 200);
    assert.equal(idlePoll.count, 0, `a poll with nothing to say answers an empty list: ${JSON.stringify(idlePoll)}`);
    const idleMs = idlePoll.end - idlePoll.start;
    assert.ok(idleMs >= POLL_TIMEOUT * 1000 - 1000 && idleMs <= POLL_TIMEOUT * 1000 + 2500, `the idle poll waited ${idleMs} ms for ?timeout=${POLL_TIMEOUT}`);

    await publishRound(sb, published, [a, b], 3, 'between');
    await sleep(100);
    const pollsBefore = st.polls.length;
    await page.evaluate(() => window.sb.setPoll('poll', { hold: false }));
    st = await waitForPage(page, 'poll', (s) => messagesOf(s).length >= 12, { timeout: 5000, what: 'the 6 messages published between polls' });
    const next = st.polls[pollsBefore];
    assert.ok(next.count >= 1 && next.end - next.start < 1500, `the poll after the pause answered at once with messages: ${JSON.stringify(next)}`);

    // 4. Once more while a poll waits, then check everything.
    st = await waitForPage(page, 'poll', waitingPoll(200, st.frames.at(-1).t), { timeout: 5000, what: 'a poll to be waiting' });
    await publishRound(sb, published, [a, b], 2, 'last');
    await waitForPage(page, 'poll', (s) => messagesOf(s).length >= publishedCount(published), { timeout: 5000, what: 'the last messages' });
    st = await settle(page, 'poll');
    await page.evaluate(() => window.sb.stop('poll'));

    assertExactlyOnce(assert, st, published);
    st.polls.forEach((p, i) => {
      if (i === 0 || p.end === undefined) return;
      assert.ok(p.withCursor, `poll ${i} passed the last cursor`);
      assert.equal(p.status, 200, `poll ${i} answered ${p.status} ${p.body || p.error || ''}`);
    });
    assert.deepEqual(st.bad, [], 'every answer was JSON');
  }));

test('poll: the first poll\'s connected carries a session (PROTOCOL §5)', { timeout: 10_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page } = env;
    const user = uniq('poll-session');
    const url = `${sb.url}/poll?channel=${uniq('poll-s')}&token=${sb.token(user)}`;
    const got = await page.evaluate((u) => window.sb.tryFetch(u, { signal: AbortSignal.timeout(5000) }), url);
    assert.equal(got.status, 200, JSON.stringify(got).slice(0, 300));
    const connected = JSON.parse(got.body).messages[0];
    assert.equal(connected.type, 'connected');
    assert.equal(typeof connected.session, 'string', `connected carries a session on long polling: ${JSON.stringify(connected)}`);
  }));
