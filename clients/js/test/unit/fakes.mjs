// Fakes for the unit tests: a clock whose time moves only when the test says so, and
// transports that record what the client sends and let the test play the server.
import { createHmac } from 'node:crypto';

/** Lets every pending promise callback run (timers of the fake clock never run by themselves). */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

export class FakeClock {
  constructor(start = 1_800_000_000_000) {
    this.t = start;
    this.timers = [];
    this.seq = 0;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const timer = { at: this.t + Math.max(0, ms), fn, id: ++this.seq };
    this.timers.push(timer);
    return timer;
  }

  clearTimeout(timer) {
    const i = this.timers.indexOf(timer);
    if (i >= 0) this.timers.splice(i, 1);
  }

  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await flush();
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers.splice(this.timers.indexOf(due), 1);
      this.t = due.at;
      due.fn();
    }
    this.t = end;
    await flush();
  }
}

/** Transports that do nothing by themselves: the test connects, answers and drops them. */
export function fakeTransports() {
  const opened = [];
  const factory = (name) => ({
    unavailable: () => null,
    open(ctx, events) {
      const t = {
        name,
        token: ctx.token(),
        sent: [],
        closedByClient: false,
        farewell: null,
        send(commands) {
          t.sent.push(...commands);
        },
        close(farewell) {
          t.closedByClient = true;
          t.farewell = farewell ?? null;
        },
        // The test plays the server with these:
        connect(extra = {}) {
          events.activity();
          events.frame({ type: 'connected', client: `c${opened.indexOf(t) + 1}`, user: 'u', ping_interval: 20, ...extra });
        },
        frame(frame) {
          events.activity();
          events.frame(frame);
        },
        reply(command, fields = {}) {
          t.frame({ type: 'reply', id: command.id, ...fields });
        },
        error(command, code, message = code) {
          t.frame({ type: 'error', id: command.id, code, message });
        },
        drop(code = 'transport', message = 'cut') {
          events.closed({ code, message });
        },
        /** The commands of one type this transport got. */
        commands(type) {
          return t.sent.filter((c) => c.type === type);
        },
      };
      opened.push(t);
      return t;
    },
  });
  const factories = {
    websocket: factory('websocket'),
    sse: factory('sse'),
    'http-stream': factory('http-stream'),
    'long-poll': factory('long-poll'),
  };
  return { opened, factories, last: () => opened[opened.length - 1] };
}

/** An HS256 JWT with `exp` seconds since the epoch (the unit tests never verify it). */
export function jwt(exp, sub = 'u') {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, exp });
  return `${head}.${body}.${createHmac('sha256', 'k').update(`${head}.${body}`).digest('base64url')}`;
}
