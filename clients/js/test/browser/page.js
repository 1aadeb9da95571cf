// The page side of the browser tests: it imports the SDK bundle as an application would and
// keeps a record of everything each client does, which the tests read with T.snapshot(key).
import { Switchboard } from '/switchboard.js';

const clients = {};
const records = {};

function record(key) {
  return (records[key] ??= {
    states: [], transports: [], messages: [], subscribed: [], errors: [], joins: [], leaves: [],
    clientErrors: [], disconnected: [], logs: [], tokens: 0, rooms: {},
  });
}

window.T = {
  ready: true,
  Switchboard,

  /**
   * Makes client `key` for `url` with `options` (plus `getTokenFor: {user, ttl}`, which
   * makes getToken ask the test for tokens), subscribes `channels`, and connects.
   */
  start(key, url, options = {}, channels = []) {
    const r = record(key);
    const { getTokenFor, ...rest } = options;
    const opts = {
      ...rest,
      logger: (level, message) => {
        r.logs.push(`${Math.round(performance.now())} ${level}: ${message}`);
        if (r.logs.length > 400) r.logs.shift();
      },
    };
    if (getTokenFor) {
      opts.getToken = async () => {
        r.tokens++;
        return window.mintToken(getTokenFor.user, getTokenFor.ttl);
      };
    }
    const sb = new Switchboard(url, opts);
    clients[key] = sb;
    sb.on('state', (s) => {
      r.states.push({ s, t: Date.now() });
      if (s === 'connected') r.transports.push(sb.transport);
    });
    sb.on('error', (e) => r.clientErrors.push(e));
    sb.on('disconnected', (d) => r.disconnected.push(d));
    for (const channel of channels) T.subscribe(key, channel);
    r.connectStarted = Date.now();
    sb.connect().then(() => { r.firstConnectedAt ??= Date.now(); }, () => {});
  },

  subscribe(key, channel) {
    const r = record(key);
    const sub = clients[key].subscribe(channel);
    sub.on('message', (m) => r.messages.push(m));
    sub.on('subscribed', (s) => r.subscribed.push({ channel, ...s, t: Date.now() }));
    sub.on('error', (e) => r.errors.push({ channel, ...e }));
    sub.on('join', (m) => r.joins.push({ channel, ...m }));
    sub.on('leave', (m) => r.leaves.push({ channel, ...m }));
    return sub;
  },

  client: (key) => clients[key],

  snapshot(key) {
    const sb = clients[key];
    return JSON.parse(JSON.stringify({ ...record(key), state: sb?.state, transport: sb?.transport }));
  },

  /** Runs an SDK call and answers `{ok, value}` or `{error: {code, message}}`. */
  async run(fn) {
    try {
      return { ok: true, value: await fn() };
    } catch (e) {
      return { error: { code: e.code, message: e.message, isError: e instanceof Error } };
    }
  },

  stop(key) {
    clients[key]?.disconnect();
  },
};
