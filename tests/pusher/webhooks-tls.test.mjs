// Webhooks to https:// endpoints: the server checks the endpoint's certificate against the
// system's roots plus the webhook's own `ca`, and sends nothing to an endpoint it cannot trust.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { makeCertificate, sleep, startServer, subscribed, uniq, until, webhookReceiver } from './harness.mjs';

let server;
let certificate;
let trusted;
let untrusted;
before(async () => {
  certificate = makeCertificate();
  trusted = await webhookReceiver({ tls: certificate });
  untrusted = await webhookReceiver({ tls: certificate });
  server = await startServer({
    appToml: `
[[pusher.apps.webhooks]]
url = "${trusted.url}"
ca = "${certificate.ca}"

[[pusher.apps.webhooks]]
url = "${untrusted.url}"
events = ["channel_occupied"]
`,
  });
});
after(async () => {
  await server?.stop();
  await trusted?.close();
  await untrusted?.close();
  certificate?.remove();
});

test('an https webhook with its CA is delivered and verifies with the SDK helper', async () => {
  const name = uniq('tls-hook');
  const client = server.client();
  await subscribed(client, name);
  const event = await until(
    () => trusted.events().find((e) => e.name === 'channel_occupied' && e.channel === name),
    'channel_occupied over https',
    8000,
  );
  assert.equal(event.channel, name);
  const sdk = server.sdk();
  for (const request of trusted.requests) {
    assert.equal(sdk.webhook(request).isValid(), true, request.rawBody);
  }
  client.disconnect();
});

test('an https endpoint whose certificate is not trusted gets nothing, and the failure is counted', async () => {
  const metrics = async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    return Number(/^switchboard_pusher_webhooks_failed_total (\d+)/m.exec(text)?.[1] ?? 0);
  };
  const client = server.client();
  await subscribed(client, uniq('tls-untrusted'));
  await until(async () => (await metrics()) >= 1, 'a failed attempt counted', 8000);
  await sleep(500);
  assert.equal(untrusted.requests.length, 0, 'no request got through an untrusted certificate');
  client.disconnect();
});
