// The connection: which transport to try, when to reconnect, what to do with a token, and
// which reply answers which command. It knows nothing about channels or rooms: the client
// (client.ts) re-subscribes and re-joins when told `connected`.
//
// Life of a connection:
//   connect() -> attempt: pick a transport, make sure the token is fresh, open it, wait for
//   `connected` (at most `timeout` ms). A transport that fails before `connected` makes it try
//   the next one at once; when every one failed it backs off and starts over. The first that
//   works is remembered (settled) and tried first after a drop; one that fails to open twice
//   in a row is forgotten and the list is tried from the top again.
//   After a drop it reconnects after a backoff with jitter. A server that says not to
//   reconnect (`disconnect` with `reconnect: false`, a refused token without `getToken`) ends
//   it: state `disconnected`, event `disconnected`.

import { Emitter } from "./emitter.js";
import { isTransient, SwitchboardError, toSwitchboardError } from "./errors.js";
import { backoffDelay, type Clock } from "./timing.js";
import { isStale, refreshMargin } from "./token.js";
import type { Transport, TransportClosed, TransportContext, TransportFactory } from "./transports/transport.js";
import type {
  ClientCommand,
  CommandBody,
  ConnectedFrame,
  ConnectionState,
  DisconnectInfo,
  ErrorInfo,
  Logger,
  PushFrame,
  ReplyFrame,
  ServerFrame,
  TransportName,
} from "./types.js";

export interface ConnectionOptions {
  baseUrl: string;
  token?: string;
  getToken?: () => Promise<string> | string;
  transports: TransportName[];
  factories: Record<TransportName, TransportFactory>;
  minReconnectDelay: number;
  maxReconnectDelay: number;
  /** Ms to wait for `connected`, and for the answer of a call. */
  timeout: number;
  WebSocket?: TransportContext["WebSocket"];
  fetch: typeof fetch;
  log: Logger;
  clock: Clock;
  random?: () => number;
}

export interface ConnectionEvents {
  state: ConnectionState;
  /** A transport is connected: time to (re)subscribe and (re)join. */
  connected: ConnectedFrame;
  /** A frame that is not an answer (messages, presence, room events, ...). */
  push: PushFrame;
  /** The connection stopped for good (it will not reconnect by itself). */
  disconnected: DisconnectInfo;
  /** Something the application may want to know that no call is waiting for. */
  error: ErrorInfo;
}

interface Request {
  id: number;
  body: CommandBody;
  /** Bound requests belong to one connection and fail with it; others wait and are re-sent. */
  bound: boolean;
  sent: boolean;
  resolve(reply: ReplyFrame): void;
  reject(error: SwitchboardError): void;
  timer?: unknown;
}

interface Link {
  seq: number;
  name: TransportName;
  transport: Transport | null;
  connected: boolean;
  /** The server's `disconnect` frame, if one came: its reason wins over the transport's. */
  disconnect: DisconnectInfo | null;
}

/** Default ping interval when the server does not say (seconds). */
const DEFAULT_PING_INTERVAL = 20;
/** Seconds a long poll waits on the server (its default). */
const POLL_TIMEOUT = 25;

export class Connection extends Emitter<ConnectionEvents> {
  state: ConnectionState = "disconnected";
  /** The transport in use while connected. */
  transportName: TransportName | null = null;
  /** Commands to send as a best-effort goodbye when a long-poll session is abandoned. */
  farewell: () => Omit<ClientCommand, "id">[] = () => [];

  private token: string | undefined;
  private tokenFetch: Promise<string> | null = null;
  private forceNewToken = false;
  private wanted = false;
  /** disconnect() was called (or the server ended it): calls fail at once until connect(). */
  private stopped = false;
  private lastTokenRefusal = -Infinity;
  private seq = 0;
  private link: Link | null = null;
  private settled: TransportName | null = null;
  private settledFailures = 0;
  private candidate = 0;
  private retries = 0;
  private nextId = 0;
  private requests = new Map<number, Request>();
  private outbox: ClientCommand[] = [];
  private flushScheduled = false;
  private lastActivity = 0;
  private pingOut = false;
  private timers: { retry?: unknown; open?: unknown; watchdog?: unknown; refresh?: unknown } = {};
  private openFailures: string[] = [];

  constructor(private readonly opts: ConnectionOptions) {
    super();
    this.token = opts.token;
  }

  protected override onListenerError(event: PropertyKey, error: unknown): void {
    this.opts.log("error", `a "${String(event)}" listener threw`, error);
  }

  // ---- public --------------------------------------------------------------------------------

  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.stopped = false;
    this.retries = 0;
    this.candidate = 0;
    this.openFailures = [];
    void this.attempt();
  }

  disconnect(reason: DisconnectInfo = { code: "disconnected", message: "disconnect() was called", reconnect: false }): void {
    this.stopped = true;
    if (!this.wanted && this.state === "disconnected") return;
    this.wanted = false;
    const link = this.link;
    this.link = null;
    this.clearTimers();
    link?.transport?.close(this.farewellCommands());
    this.transportName = null;
    this.rejectAll(new SwitchboardError(reason.code, reason.message));
    this.setState("disconnected");
    this.emit("disconnected", reason);
  }

  /**
   * Sends a command and answers its reply. Unbound commands made while disconnected wait for
   * the connection, and are sent again after a drop, until `timeout`; bound ones fail at once
   * when there is no connection, and with it when it drops.
   */
  request(body: CommandBody, { bound = false, timeout = this.opts.timeout } = {}): Promise<ReplyFrame> {
    return new Promise<ReplyFrame>((resolve, reject) => {
      if (bound && !this.link?.connected) {
        reject(new SwitchboardError("disconnected", "not connected"));
        return;
      }
      if (!bound && this.stopped) {
        reject(new SwitchboardError("disconnected", "disconnected: call connect() first"));
        return;
      }
      const id = ++this.nextId;
      const request: Request = { id, body, bound, sent: false, resolve, reject };
      this.requests.set(id, request);
      if (timeout > 0) {
        request.timer = this.opts.clock.setTimeout(() => {
          if (!this.requests.delete(id)) return;
          reject(new SwitchboardError("timeout", `no answer to ${body.type} within ${timeout} ms`));
        }, timeout);
      }
      if (this.link?.connected) this.sendRequest(request);
    });
  }

  /** The token in use (it changes after a refresh). */
  currentToken(): string | undefined {
    return this.token;
  }

  // ---- attempts ------------------------------------------------------------------------------

  private pickTransport(): TransportName {
    if (this.settled) return this.settled;
    return this.opts.transports[this.candidate % this.opts.transports.length];
  }

  private async attempt(): Promise<void> {
    if (!this.wanted) return;
    const seq = ++this.seq;
    this.setState("connecting");
    const name = this.pickTransport();

    if (this.opts.getToken && (this.forceNewToken || !this.token || isStale(this.token, this.opts.clock.now()))) {
      try {
        await this.fetchToken();
        this.forceNewToken = false;
      } catch (e) {
        if (seq !== this.seq || !this.wanted) return;
        const error = toSwitchboardError(e, "unauthorized");
        this.opts.log("warn", `getToken failed: ${error.message}`);
        this.emit("error", error.toJSON());
        this.scheduleRetry();
        return;
      }
      if (seq !== this.seq || !this.wanted) return;
    }

    const factory = this.opts.factories[name];
    const ctx = this.transportContext();
    const unavailable = factory.unavailable(ctx);
    if (unavailable) {
      this.opts.log("info", `transport ${name} skipped: ${unavailable}`);
      this.openFailed(name, { code: "transport", message: unavailable });
      return;
    }
    this.opts.log("debug", `connecting with ${name}`);
    const link: Link = { seq, name, transport: null, connected: false, disconnect: null };
    this.link = link;
    link.transport = factory.open(ctx, {
      frame: (frame) => this.onFrame(seq, frame),
      activity: () => {
        if (this.link?.seq === seq) this.lastActivity = this.opts.clock.now();
      },
      closed: (why) => this.onClosed(seq, why),
    });
    this.timers.open = this.opts.clock.setTimeout(() => {
      if (this.link?.seq === seq && !this.link.connected) {
        this.drop(seq, { code: "timeout", message: `${name}: no connected frame within ${this.opts.timeout} ms` });
      }
    }, this.opts.timeout);
  }

  private transportContext(): TransportContext {
    const { baseUrl, WebSocket, fetch, log } = this.opts;
    return { baseUrl, WebSocket, fetch, log, token: () => this.token, pollTimeout: POLL_TIMEOUT };
  }

  private fetchToken(): Promise<string> {
    if (!this.tokenFetch) {
      const getToken = this.opts.getToken!;
      this.tokenFetch = (async () => {
        try {
          const token = await getToken();
          this.token = token || undefined;
          this.opts.log("debug", "got a new token from getToken");
          return token;
        } finally {
          this.tokenFetch = null;
        }
      })();
    }
    return this.tokenFetch;
  }

  /** Abandons the current transport (it stopped answering, or never said `connected`). */
  private drop(seq: number, why: TransportClosed): void {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    link.transport?.close(this.farewellCommands());
    this.onClosed(seq, why);
  }

  private openFailed(name: TransportName, why: TransportClosed): void {
    this.openFailures.push(`${name}: ${why.message}`);
    if (this.settled) {
      // The transport that worked before fails to open: after twice, try them all again.
      if (++this.settledFailures >= 2) {
        this.opts.log("info", `${name} failed to open twice: trying every transport again`);
        this.settled = null;
        this.candidate = 0;
      }
      this.scheduleRetry();
      return;
    }
    this.candidate++;
    if (this.candidate < this.opts.transports.length) {
      void this.attempt();
      return;
    }
    this.candidate = 0;
    this.emit("error", { code: "transport", message: `no transport could connect (${this.openFailures.join("; ")})` });
    this.openFailures = [];
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (!this.wanted) return;
    const delay = backoffDelay(this.retries++, this.opts.minReconnectDelay, this.opts.maxReconnectDelay, this.opts.random);
    this.opts.log("debug", `reconnecting in ${delay} ms`);
    this.setState("connecting");
    this.timers.retry = this.opts.clock.setTimeout(() => void this.attempt(), delay);
  }

  // ---- a transport's events ------------------------------------------------------------------

  private onFrame(seq: number, frame: ServerFrame): void {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    if (!link.connected) {
      if (frame.type === "connected") this.onConnected(link, frame);
      else if (frame.type === "error" && frame.id === undefined) link.disconnect = { code: frame.code, message: frame.message, reconnect: true };
      else if (frame.type === "disconnect") link.disconnect = { code: frame.code, message: frame.message ?? frame.code, reconnect: frame.reconnect !== false };
      return;
    }
    switch (frame.type) {
      case "reply":
      case "pong":
        this.settle(frame.id, frame as ReplyFrame, null);
        return;
      case "error":
        if (typeof frame.id === "number") {
          this.settle(frame.id, null, new SwitchboardError(frame.code, frame.message));
        } else {
          this.opts.log("warn", `server error: ${frame.code}: ${frame.message}`);
          this.emit("error", { code: frame.code, message: frame.message });
        }
        return;
      case "disconnect":
        this.opts.log("info", `the server disconnects: ${frame.code} ${frame.message ?? ""}`);
        link.disconnect = { code: frame.code, message: frame.message ?? frame.code, reconnect: frame.reconnect !== false };
        return;
      case "connected":
        return;
      default:
        this.emit("push", frame);
    }
  }

  private onConnected(link: Link, frame: ConnectedFrame): void {
    link.connected = true;
    this.opts.clock.clearTimeout(this.timers.open);
    this.settled = link.name;
    this.settledFailures = 0;
    this.retries = 0;
    this.candidate = 0;
    this.openFailures = [];
    this.transportName = link.name;
    this.lastActivity = this.opts.clock.now();
    this.opts.log("info", `connected with ${link.name} as client ${frame.client}`);
    this.setState("connected");
    this.armWatchdog(link.seq, (frame.ping_interval ?? DEFAULT_PING_INTERVAL) * 1000);
    this.scheduleRefresh(frame.exp);
    this.emit("connected", frame);
    // What waited for a connection (and what a drop interrupted) goes now, in call order.
    for (const request of [...this.requests.values()].sort((a, b) => a.id - b.id)) {
      if (!request.sent) this.sendRequest(request);
    }
  }

  private onClosed(seq: number, why: TransportClosed): void {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    this.link = null;
    this.transportName = null;
    this.clearTimers();
    const reason: DisconnectInfo = link.disconnect ?? { ...why, reconnect: true };
    this.opts.log(link.connected ? "info" : "debug", `${link.name} ${link.connected ? "dropped" : "failed"}: ${reason.code}: ${reason.message}`);
    for (const request of [...this.requests.values()]) {
      if (request.bound) {
        this.requests.delete(request.id);
        this.opts.clock.clearTimeout(request.timer);
        request.reject(new SwitchboardError("disconnected", `the connection dropped (${reason.message})`));
      } else {
        request.sent = false;
      }
    }
    if (!this.wanted) return;

    if (reason.code === "token_expired" || reason.code === "unauthorized") {
      if (this.opts.getToken) {
        // A new token can help: get one before the next attempt (a second refusal in a row
        // backs off like any failure, so a broken token endpoint is not hammered).
        this.forceNewToken = true;
        const now = this.opts.clock.now();
        const again = now - this.lastTokenRefusal < 5_000;
        this.lastTokenRefusal = now;
        if (again) this.scheduleRetry();
        else void this.attempt();
        return;
      }
      this.disconnect({ code: reason.code, message: reason.message, reconnect: false });
      return;
    }
    if (!reason.reconnect) {
      this.disconnect(reason);
      return;
    }
    if (link.connected) this.scheduleRetry();
    else this.openFailed(link.name, reason);
  }

  // ---- requests ------------------------------------------------------------------------------

  private sendRequest(request: Request): void {
    request.sent = true;
    this.outbox.push({ ...request.body, id: request.id } as ClientCommand);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Everything asked in one tick goes together (one POST on the one-way doors).
    queueMicrotask(() => {
      this.flushScheduled = false;
      const commands = this.outbox.splice(0);
      if (commands.length && this.link?.connected) this.link.transport?.send(commands);
    });
  }

  private settle(id: number, reply: ReplyFrame | null, error: SwitchboardError | null): void {
    const request = this.requests.get(id);
    if (!request) return;
    this.requests.delete(id);
    this.opts.clock.clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(reply!);
  }

  private rejectAll(error: SwitchboardError): void {
    for (const request of this.requests.values()) {
      this.opts.clock.clearTimeout(request.timer);
      request.reject(error);
    }
    this.requests.clear();
  }

  private farewellCommands(): ClientCommand[] {
    return this.farewell().map((c) => ({ ...c, id: ++this.nextId }) as ClientCommand);
  }

  // ---- keep-alive and token refresh ----------------------------------------------------------

  /**
   * Checks that the server is still there: every stream door sends a heartbeat each ping
   * interval and a poll answers within its timeout; a browser WebSocket cannot see the
   * server's pings, so there it sends a `ping` command when nothing came for an interval.
   * Nothing for two intervals (and 5 s): the link is dead, whatever the OS thinks.
   */
  private armWatchdog(seq: number, pingMs: number): void {
    const every = Math.max(250, Math.min(5_000, pingMs / 4));
    // A long poll may rightly stay silent for its whole timeout.
    const deadMs = Math.max(2 * pingMs + 5_000, this.link?.name === "long-poll" ? (POLL_TIMEOUT + 10) * 1000 : 0);
    const check = () => {
      const link = this.link;
      if (!link || link.seq !== seq) return;
      const idle = this.opts.clock.now() - this.lastActivity;
      if (idle >= deadMs) {
        this.drop(seq, { code: "transport", message: `nothing from the server for ${Math.round(idle / 1000)} s` });
        return;
      }
      if (link.name === "websocket" && idle >= pingMs && !this.pingOut) {
        this.pingOut = true;
        this.request({ type: "ping" }, { bound: true }).then(
          () => (this.pingOut = false),
          () => (this.pingOut = false),
        );
      }
      this.timers.watchdog = this.opts.clock.setTimeout(check, every);
    };
    this.timers.watchdog = this.opts.clock.setTimeout(check, every);
  }

  private scheduleRefresh(exp: number | undefined): void {
    this.opts.clock.clearTimeout(this.timers.refresh);
    if (!this.opts.getToken || typeof exp !== "number") return;
    const lifetime = exp * 1000 - this.opts.clock.now();
    const delay = Math.max(0, lifetime - refreshMargin(lifetime));
    this.timers.refresh = this.opts.clock.setTimeout(() => void this.refresh(), delay);
  }

  /** Replaces the connection's token with a fresh one from `getToken` before it expires. */
  private async refresh(): Promise<void> {
    const seq = this.link?.seq;
    try {
      const token = await this.fetchToken();
      if (this.link?.seq !== seq || !this.link?.connected) return;
      const reply = await this.request({ type: "refresh", token }, { bound: true });
      this.opts.log("debug", `token refreshed, valid until ${String(reply.exp)}`);
      this.scheduleRefresh(typeof reply.exp === "number" ? reply.exp : undefined);
    } catch (e) {
      if (this.link?.seq !== seq || !this.link?.connected) return;
      const error = toSwitchboardError(e);
      this.opts.log("warn", `token refresh failed: ${error.code}: ${error.message}`);
      if (!isTransient(error.code) && error.code !== "unauthorized") this.emit("error", error.toJSON());
      // Try again shortly; if the token runs out meanwhile the server closes the connection
      // with `token_expired` and the next attempt gets a new one.
      this.timers.refresh = this.opts.clock.setTimeout(() => void this.refresh(), 2_000);
    }
  }

  private clearTimers(): void {
    for (const handle of Object.values(this.timers)) this.opts.clock.clearTimeout(handle);
    this.timers = {};
    this.pingOut = false;
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }
}
