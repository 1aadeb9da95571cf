// A TCP proxy of the tests' own in front of the real server, to make the network faults users
// meet: a proxy that refuses WebSocket upgrades (403, as some corporate proxies do), and one
// that cuts every connection after a random lifetime. Loopback only; Node built-ins only.
import { connect, createServer } from 'node:net';

/**
 * Starts a proxy to `127.0.0.1:targetPort`. `refuseWebSocket`: a connection whose first request
 * asks for a WebSocket upgrade is answered 403 and closed. `cut: [minMs, maxMs]`: every
 * connection (both sides) is destroyed after a random lifetime in that range; `setCut(null)`
 * stops cutting new connections.
 */
export async function startProxy({ targetPort, refuseWebSocket = false, cut = null }) {
  const live = new Set();
  const stats = { connections: 0, cut: 0, refusedUpgrades: 0 };
  let cutRange = cut;

  const server = createServer((client) => {
    stats.connections++;
    let upstream = null;
    let timer = null;
    const pair = { client, get upstream() { return upstream; }, destroy };
    live.add(pair);
    function destroy() {
      clearTimeout(timer);
      live.delete(pair);
      client.destroy();
      upstream?.destroy();
    }
    client.on('error', destroy);
    client.on('close', destroy);
    if (cutRange) {
      const [min, max] = cutRange;
      timer = setTimeout(() => {
        stats.cut++;
        destroy();
      }, min + Math.random() * (max - min));
    }

    // Hold the first request's head to look at it, then pipe both ways.
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0 && head.length < 16_384) return;
      client.off('data', onData);
      const text = head.subarray(0, end < 0 ? head.length : end).toString('latin1');
      if (refuseWebSocket && /^upgrade:\s*websocket\s*$/im.test(text)) {
        stats.refusedUpgrades++;
        client.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nWebSocket not allowed.\r\n');
        return;
      }
      upstream = connect(targetPort, '127.0.0.1');
      upstream.on('error', destroy);
      upstream.on('close', destroy);
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    };
    client.on('data', onData);
  });
  await new Promise((ok, fail) => server.once('error', fail).listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats,
    /** Destroys every connection now. */
    cutAll() {
      for (const pair of [...live]) pair.destroy();
    },
    setCut(range) {
      cutRange = range;
    },
    async close() {
      for (const pair of [...live]) pair.destroy();
      await new Promise((ok) => server.close(() => ok()));
    },
  };
}
