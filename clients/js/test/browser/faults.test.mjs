// Real network faults, per transport: the page's client goes through a proxy that cuts every
// connection after 100 to 600 ms while the backend publishes hundreds of messages on two
// channels. Each message must reach the application exactly once, in order, and every
// resubscribe must say `recovered: true`. Prints the figures (sent, received, repeated, lost).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { startProxy } from '../support/proxy.mjs';
import { uniq } from '../support/server.mjs';
import { deliveryFigures, setup, snapshot, waitIn, withDiagnostics } from './harness.mjs';

const PER_CHANNEL = 150;
const CUT = [100, 600];

let env;
before(async () => { env = await setup(); }, { timeout: 40_000 });
after(async () => { await env?.close(); });

for (const transport of ['websocket', 'sse', 'http-stream', 'long-poll']) {
  test(`${transport}: every connection cut again and again while ${2 * PER_CHANNEL} messages are published: each once, in order, recovered`, { timeout: 60_000 }, async () => {
    const proxy = await startProxy({ targetPort: env.sb.port, cut: CUT });
    const page = await env.page(transport);
    try {
      await withDiagnostics(env, async () => {
        const channels = [`sdk:${uniq('fa')}`, `sdk:${uniq('fb')}`];
        await page.evaluate(({ url, token, transport, channels }) => T.start('c', url, { token, transports: [transport] }, channels),
          { url: proxy.url, token: env.sb.token(uniq('fault')), transport, channels });
        await waitIn(page, (n) => T.snapshot('c').subscribed.length >= n, channels.length, { what: 'first subscribes', timeout: 15_000 });

        // The backend publishes at a steady pace (about 75 a second), straight to the server.
        const started = Date.now();
        for (let i = 1; i <= PER_CHANNEL; i++) {
          for (const channel of channels) {
            const { offset } = await env.sb.publish(channel, { i, channel });
            assert.equal(offset, i);
          }
          await sleep(20);
        }
        const publishMs = Date.now() - started;
        proxy.setCut(null); // new connections live from now on
        await waitIn(page, (n) => T.snapshot('c').messages.length >= n, 2 * PER_CHANNEL, { what: 'every message', timeout: 30_000 });
        await sleep(500); // late repeats would show up now
        const st = await snapshot(page, 'c');

        const figures = { transport, sent: 0, received: 0, repeated: 0, lost: 0 };
        for (const channel of channels) {
          const f = deliveryFigures({ messages: st.messages.filter((m) => m.channel === channel) }, PER_CHANNEL);
          assert.ok(f.inOrder, `${channel}: in offset order`);
          assert.deepEqual(
            st.messages.filter((m) => m.channel === channel).map((m) => m.data.i),
            Array.from({ length: PER_CHANNEL }, (_, i) => i + 1),
            `${channel}: every payload exactly once, in order`,
          );
          for (const k of ['sent', 'received', 'repeated', 'lost']) figures[k] += f[k];
        }
        const resubscribes = st.subscribed.slice(channels.length);
        figures.reconnects = st.transports.length - 1;
        figures.connectionsCut = proxy.stats.cut;
        figures.publishMs = publishMs;
        console.log(`# figures ${JSON.stringify(figures)}`);
        assert.ok(figures.connectionsCut >= 3, `connections were cut again and again (${figures.connectionsCut})`);
        if (transport === 'long-poll') {
          // A cut poll is sent again by the browser itself (a GET on a reused connection): the
          // cursor makes that harmless, so the client may never notice a thing.
          assert.equal(resubscribes.length, 2 * figures.reconnects);
        } else {
          assert.ok(figures.reconnects >= 3, `the connection was cut and came back several times (${figures.reconnects})`);
          assert.ok(resubscribes.length >= 2 * 3, 'each reconnect resubscribed both channels');
        }
        for (const s of resubscribes) assert.equal(s.recovered, true, `resubscribe of ${s.channel} at ${s.offset} recovered`);
        assert.deepEqual(new Set(st.transports), new Set([transport]), 'stayed on the forced transport');
        assert.equal(figures.repeated, 0);
        assert.equal(figures.lost, 0);
        assert.deepEqual(st.clientErrors.filter((e) => e.code !== 'transport'), [], 'no other errors');
      }, async () => `--- client log ---\n${(await snapshot(page, 'c')).logs.slice(-40).join('\n')}`);
    } finally {
      await page.context().close();
      await proxy.close();
    }
  });
}
