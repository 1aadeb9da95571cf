// The seam between the connection logic and the network: one transport is one attempt at one
// connection through one door. It turns bytes into frames and commands into bytes, and says
// once when it is over. It never reconnects, retries or decides anything: that is the
// connection's job (connection.ts), which is why the connection can be tested with a fake one.

import type { ClientCommand, ErrorCode, Logger, ServerFrame, TransportName } from "../types.js";

export interface TransportEvents {
  /** A frame from the server: `connected` first, then replies (in any order) and pushes. */
  frame(frame: ServerFrame): void;
  /** Bytes arrived (a frame, a heartbeat, a poll's answer): the link is alive. */
  activity(): void;
  /** The transport is over; called at most once, never after `close()` was called. */
  closed(info: TransportClosed): void;
}

/** Why a transport ended. */
export interface TransportClosed {
  /** An error code of the protocol when the server gave one, else `transport`. */
  code: ErrorCode;
  message: string;
}

export interface Transport {
  readonly name: TransportName;
  /** Sends commands, in order. Replies come back through `frame`, matched by id. */
  send(commands: ClientCommand[]): void;
  /**
   * Ends the transport. `farewell` commands are sent on a best-effort basis first where the
   * server would otherwise keep the client for a while (long polling's session).
   */
  close(farewell?: ClientCommand[]): void;
}

/** What a transport needs from the client. */
export interface TransportContext {
  /** `http(s)://host[:port][/prefix]` without a trailing slash. */
  baseUrl: string;
  /** The token to connect with now (it changes after a refresh). */
  token(): string | undefined;
  WebSocket?: WebSocketConstructor;
  fetch: typeof fetch;
  log: Logger;
  /** Long polling: seconds a poll may wait on the server. */
  pollTimeout: number;
}

/** The browser's WebSocket constructor, or a compatible one such as the `ws` package's. */
export type WebSocketConstructor = new (url: string) => WebSocket;

export interface TransportFactory {
  /** Why this transport cannot run here at all (no WebSocket in Node 20 without the option). */
  unavailable(ctx: TransportContext): string | null;
  open(ctx: TransportContext, events: TransportEvents): Transport;
}

/** `base` + `path` + query parameters (the token among them). */
export function doorUrl(ctx: TransportContext, path: string, params: Record<string, string | string[] | undefined> = {}): string {
  const url = new URL(ctx.baseUrl + path);
  const token = ctx.token();
  if (token) url.searchParams.set("token", token);
  for (const [k, v] of Object.entries(params)) {
    for (const value of v === undefined ? [] : Array.isArray(v) ? v : [v]) url.searchParams.append(k, value);
  }
  return url.toString();
}

/** Parses one frame of text; `null` for anything that is not a JSON object with a `type`. */
export function parseFrame(text: string, log: Logger): ServerFrame | null {
  try {
    const value = JSON.parse(text) as unknown;
    if (value && typeof value === "object" && typeof (value as { type?: unknown }).type === "string") {
      return value as ServerFrame;
    }
  } catch {
    /* fall through */
  }
  log("warn", "ignoring a frame that is not a JSON object with a type", text.slice(0, 200));
  return null;
}
