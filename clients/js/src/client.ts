// `Switchboard`: the application's entry point (CLIENT-SDK.md). It holds the subscriptions and
// rooms, hands each push frame to its owner, and renews them all on every new connection.

import { Connection } from "./connection.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError } from "./errors.js";
import { Room } from "./room.js";
import { Subscription } from "./subscription.js";
import { backoffDelay, realClock, type Clock } from "./timing.js";
import { websocket } from "./transports/websocket.js";
import { httpStream, sse } from "./transports/streaming.js";
import { longPoll } from "./transports/long-poll.js";
import type { TransportFactory, WebSocketConstructor } from "./transports/transport.js";
import type {
  ConnectionState,
  DisconnectInfo,
  ErrorInfo,
  Logger,
  LogLevel,
  Position,
  PublishResult,
  PushFrame,
  TransportName,
} from "./types.js";

export interface SwitchboardOptions {
  /** A connection token (JWT). */
  token?: string;
  /** Gives a fresh token: called before the current one expires and after `token_expired`. */
  getToken?: () => Promise<string> | string;
  /** Transports in the order tried. Default: all four, in this order. */
  transports?: TransportName[];
  /** Reconnect backoff bounds in ms (with jitter). Defaults: 250 and 10 000. */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** Ms to wait for a transport to connect, and for the answer to a call. Default 10 000. */
  timeout?: number;
  /** A WebSocket implementation where there is no global one (Node 20: the `ws` package). */
  WebSocket?: WebSocketConstructor | unknown;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
  /** Logs every step to the console. */
  debug?: boolean;
  /** Receives every log line (whatever `debug` says). */
  logger?: Logger;
  /** Tests only: a fake clock and transports. */
  clock?: Clock;
  transportFactories?: Partial<Record<TransportName, TransportFactory>>;
}

export interface SwitchboardEvents {
  state: ConnectionState;
  /** The client stopped for good: `disconnect()` was called, or the server refused it. */
  disconnected: DisconnectInfo;
  /** Errors no call is waiting for (every transport failed, a token could not be fetched, ...). */
  error: ErrorInfo;
}

export interface SubscribeOptions {
  /** Start after this position: messages after it still in history are delivered first. */
  since?: Position;
}

export interface JoinRoomOptions {
  /** Shown to the other peers (`peer_joined`, `peers`); kept for rejoins. */
  meta?: unknown;
}

export const DEFAULT_TRANSPORTS: TransportName[] = ["websocket", "sse", "http-stream", "long-poll"];

const FACTORIES: Record<TransportName, TransportFactory> = {
  websocket,
  sse,
  "http-stream": httpStream,
  "long-poll": longPoll,
};

export class Switchboard extends Emitter<SwitchboardEvents> {
  private readonly connection: Connection;
  private readonly subs = new Map<string, Subscription>();
  private readonly roomMap = new Map<string, Room>();
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly options: SwitchboardOptions;

  constructor(url: string, options: SwitchboardOptions = {}) {
    super();
    this.options = options;
    this.log = makeLogger(options);
    this.clock = options.clock ?? realClock;
    const transports = options.transports ?? DEFAULT_TRANSPORTS;
    for (const name of transports) {
      if (!(name in FACTORIES)) throw new SwitchboardError("bad_request", `unknown transport "${name}" (known: ${DEFAULT_TRANSPORTS.join(", ")})`);
    }
    if (!transports.length) throw new SwitchboardError("bad_request", "no transports to try");
    const fetchImpl = options.fetch ?? (typeof fetch === "function" ? fetch.bind(globalThis) : undefined);
    this.connection = new Connection({
      baseUrl: baseUrl(url),
      token: options.token,
      getToken: options.getToken,
      transports,
      factories: { ...FACTORIES, ...options.transportFactories },
      minReconnectDelay: options.minReconnectDelay ?? 250,
      maxReconnectDelay: options.maxReconnectDelay ?? 10_000,
      timeout: options.timeout ?? 10_000,
      WebSocket: options.WebSocket as WebSocketConstructor | undefined,
      fetch: fetchImpl as typeof fetch,
      log: this.log,
      clock: this.clock,
    });
    const c = this.connection;
    c.on("state", (state) => this.emit("state", state));
    c.on("disconnected", (info) => this.emit("disconnected", info));
    c.on("error", (error) => this.emit("error", error));
    c.on("connected", () => this.renew());
    c.on("push", (frame) => this.route(frame));
    c.on("state", (state) => {
      if (state !== "connected") this.interrupted();
    });
    c.farewell = () => [
      ...[...this.subs.keys()].map((channel) => ({ type: "unsubscribe" as const, channel })),
      ...[...this.roomMap.keys()].map((room) => ({ type: "leave_room" as const, room })),
    ];
  }

  protected override onListenerError(event: PropertyKey, error: unknown): void {
    this.log("error", `a "${String(event)}" listener threw`, error);
  }

  /** "connecting", "connected" or "disconnected". */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The transport in use while connected ("websocket", "sse", "http-stream", "long-poll"). */
  get transport(): TransportName | null {
    return this.connection.transportName;
  }

  /** The subscriptions, by channel. */
  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.subs;
  }

  /** The rooms joined (or being joined), by name. */
  get rooms(): ReadonlyMap<string, Room> {
    return this.roomMap;
  }

  /** Connects (and stays connected, reconnecting as needed). Resolves once connected. */
  connect(): Promise<void> {
    const connected = new Promise<void>((resolve, reject) => {
      if (this.state === "connected") return resolve();
      const onState = (state: ConnectionState) => {
        if (state === "connected") {
          this.connection.off("state", onState);
          this.off("disconnected", onStop);
          resolve();
        }
      };
      const onStop = (info: DisconnectInfo) => {
        this.connection.off("state", onState);
        this.off("disconnected", onStop);
        reject(new SwitchboardError(info.code, info.message));
      };
      this.connection.on("state", onState);
      this.on("disconnected", onStop);
    });
    connected.catch(() => {}); // awaiting it still sees a refusal; not awaiting it is fine
    this.connection.connect();
    return connected;
  }

  /** Disconnects and stays disconnected until `connect()`. Subscriptions and rooms are kept. */
  disconnect(): void {
    this.connection.disconnect();
  }

  /** Subscribes to `channel` (or answers its existing subscription). */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    const existing = this.subs.get(channel);
    if (existing) return existing;
    const sub = new Subscription(
      {
        connection: this.connection,
        publish: (ch, data) => this.publish(ch, data),
        forget: (s) => {
          if (this.subs.get(s.channel) === s) this.subs.delete(s.channel);
        },
        log: this.log,
        retryDelay: (n) => this.retryDelay(n),
        setTimer: (fn, ms) => this.clock.setTimeout(fn, ms),
      },
      channel,
      options.since,
    );
    this.subs.set(channel, sub);
    if (this.connection.state === "connected") void sub.subscribe();
    return sub;
  }

  /**
   * Publishes `data` on `channel`. It carries an idempotency key: when a drop leaves its fate
   * unknown it is sent again after the reconnect, and a server that keeps idempotency keys
   * (PROTOCOL.md §10) publishes it once.
   */
  async publish(channel: string, data: unknown): Promise<PublishResult> {
    const reply = await this.connection.request({ type: "publish", channel, data, idempotency_key: randomKey() });
    return { offset: reply.offset as number, epoch: reply.epoch as string };
  }

  /** Joins `room`; resolves with the room once joined. It is joined again after reconnects. */
  joinRoom(name: string, options: JoinRoomOptions = {}): Promise<Room> {
    if (this.roomMap.has(name)) {
      return Promise.reject(new SwitchboardError("bad_request", `already in room \`${name}\``));
    }
    return new Promise<Room>((resolve, reject) => {
      const room = new Room(
        {
          connection: this.connection,
          forget: (r) => {
            if (this.roomMap.get(r.name) === r) this.roomMap.delete(r.name);
          },
          log: this.log,
          retryDelay: (n) => this.retryDelay(n),
          setTimer: (fn, ms) => this.clock.setTimeout(fn, ms),
        },
        name,
        options.meta,
        { resolve, reject },
      );
      this.roomMap.set(name, room);
      const timeout = this.options.timeout ?? 10_000;
      this.clock.setTimeout(() => room.abandon(new SwitchboardError("timeout", `could not join room ${name} within ${timeout} ms`)), timeout);
      if (this.connection.state === "connected") void room.join();
    });
  }

  // ---- inside --------------------------------------------------------------------------------

  /** A new connection: every subscription and room again, from where it was. */
  private renew(): void {
    for (const sub of this.subs.values()) void sub.subscribe();
    for (const room of this.roomMap.values()) void room.join();
  }

  private interrupted(): void {
    for (const sub of this.subs.values()) sub.interrupted();
    for (const room of this.roomMap.values()) room.interrupted();
  }

  private route(frame: PushFrame): void {
    switch (frame.type) {
      case "message":
      case "join":
      case "leave":
        this.subs.get(frame.channel)?.handle(frame);
        return;
      case "unsubscribed":
        this.subs.get(frame.channel)?.serverUnsubscribed(frame.reason);
        return;
      case "peer_joined":
      case "peer_left":
      case "peer_updated":
      case "signal":
        this.roomMap.get(frame.room)?.handle(frame);
        return;
      default:
        this.log("debug", `ignoring a ${frame.type} frame`);
    }
  }

  private retryDelay(attempt: number): number {
    return backoffDelay(attempt, this.options.minReconnectDelay ?? 250, this.options.maxReconnectDelay ?? 10_000);
  }
}

/** `http(s)://host:port[/prefix]` from what the application gave (ws:// and wss:// too). */
function baseUrl(url: string): string {
  const parsed = new URL(url, typeof location === "object" ? location.href : undefined);
  const scheme = parsed.protocol.replace(/^ws/, "http");
  if (scheme !== "http:" && scheme !== "https:") {
    throw new SwitchboardError("bad_request", `the server URL must be http(s):// or ws(s)://, not ${parsed.protocol}`);
  }
  return `${scheme}//${parsed.host}${parsed.pathname.replace(/\/+$/, "")}`;
}

function makeLogger(options: SwitchboardOptions): Logger {
  const { debug, logger } = options;
  const toConsole = (level: LogLevel, message: string, details?: unknown) => {
    const line = `[switchboard] ${message}`;
    const args = details === undefined ? [line] : [line, details];
    if (level === "error") console.error(...args);
    else if (level === "warn") console.warn(...args);
    else console.debug(...args);
  };
  return (level, message, details) => {
    if (logger) {
      try {
        logger(level, message, details);
      } catch {
        /* a broken logger must not break the client */
      }
    }
    if (debug) toConsole(level, message, details);
  };
}

function randomKey(): string {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
