// The harness itself: Chromium starts, the page loads from its own origin, a token minted here
// is accepted, and a message published through the server API reaches the page (WebSocket).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  assertExactlyOnce, framesOfType, messagesOf, publishRound, setup, uniq, waitForPage, withDiagnostics,
} from './harness.mjs';

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

test('harness: a page on another origin gets connected over WebSocket and receives published messages', { timeout: 20_000 }, () =>
  withDiagnostics(env, async () => {
    const { sb, page, pages } = env;
    assert.notEqual(new URL(sb.url).origin, pages.origin, 'the page is served from another origin than the server');
    assert.equal(await page.evaluate(() => location.origin), pages.origin);

    const user = uniq('ws-user');
    const channel = uniq('ws-chan');
    const url = `${sb.wsUrl}/ws?token=${sb.token(user)}`;
    await page.evaluate(([u, c]) => window.sb.startWs('ws', u, c), [url, channel]);

    let st = await waitForPage(page, 'ws', (s) => framesOfType(s, 'reply').length > 0 || framesOfType(s, 'error').length > 0 || s.events.some((e) => e.startsWith('close')), {
      timeout: 5000, what: 'connected, then the reply to subscribe',
    });
    const first = st.frames[0]?.frame;
    assert.equal(first?.type, 'connected', `the first frame is connected (socket events: ${st.events.join(', ')})`);
    assert.equal(first.user, user, 'connected names the token\'s user');
    assert.equal(typeof first.client, 'string');
    const reply = framesOfType(st, 'reply')[0]?.frame;
    assert.ok(reply, `subscribe was answered with a reply, got ${JSON.stringify(st.frames.map((r) => r.frame))}`);
    assert.equal(reply.id, 1);
    assert.equal(reply.channel, channel);

    const published = new Map();
    await publishRound(sb, published, [channel], 3, 'ws');
    st = await waitForPage(page, 'ws', (s) => messagesOf(s).length >= 3, { timeout: 5000, what: '3 messages over WebSocket' });
    await new Promise((r) => setTimeout(r, 200)); // anything extra would show up now
    st = await page.evaluate(() => window.sb.snapshot('ws'));
    assertExactlyOnce(assert, st, published, { cursors: false });
    assert.deepEqual(st.bad, [], 'every frame was JSON');
  }));
