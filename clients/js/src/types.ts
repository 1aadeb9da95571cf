// The wire frames of Switchboard's protocol (PROTOCOL.md §3) and the shapes the SDK hands to
// applications. Types only: nothing here exists at run time.

/** A position in a channel's stream: the offset of a message and the stream's epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Error codes of PROTOCOL.md §3, plus the SDK's own for failures that are not error frames. */
export type ServerErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "rate_limited"
  | "token_expired"
  | "unavailable"
  | "internal";

/**
 * `timeout`: no answer in time. `disconnected`: the client was disconnected (by `disconnect()`
 * or for good by the server) before an answer came. `transport`: every transport failed.
 */
export type ClientErrorCode = "timeout" | "disconnected" | "transport";

export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** What every failed call rejects with, and what `error` events carry. */
export interface ErrorInfo {
  code: ErrorCode;
  message: string;
}

/** A member of a channel's presence. */
export interface Member {
  client: string;
  user: string;
  info: unknown;
}

/** A peer of a room. */
export interface Peer {
  peer: string;
  user: string;
  info: unknown;
  meta: unknown;
}

// ---- client commands ------------------------------------------------------------------------

export interface SubscribeCommand { type: "subscribe"; id: number; channel: string; since?: Position }
export interface UnsubscribeCommand { type: "unsubscribe"; id: number; channel: string }
export interface PublishCommand { type: "publish"; id: number; channel: string; data: unknown; idempotency_key?: string }
export interface PresenceCommand { type: "presence"; id: number; channel: string }
export interface HistoryCommand { type: "history"; id: number; channel: string; since?: Position; limit?: number }
export interface RefreshCommand { type: "refresh"; id: number; token: string }
export interface PingCommand { type: "ping"; id: number }
export interface JoinRoomCommand { type: "join_room"; id: number; room: string; meta?: unknown }
export interface LeaveRoomCommand { type: "leave_room"; id: number; room: string }
export interface UpdateMetaCommand { type: "update_meta"; id: number; room: string; meta: unknown }
export interface SignalCommand { type: "signal"; id: number; room: string; to?: string; data: unknown }

export type ClientCommand =
  | SubscribeCommand
  | UnsubscribeCommand
  | PublishCommand
  | PresenceCommand
  | HistoryCommand
  | RefreshCommand
  | PingCommand
  | JoinRoomCommand
  | LeaveRoomCommand
  | UpdateMetaCommand
  | SignalCommand;

/** A command before the connection gives it an id. */
export type CommandBody = ClientCommand extends infer C ? (C extends { id: number } ? Omit<C, "id"> : never) : never;

// ---- server frames --------------------------------------------------------------------------

export interface ConnectedFrame {
  type: "connected";
  client: string;
  user: string;
  /** Token expiry (seconds since the epoch), when the token has one. */
  exp?: number;
  /** Seconds between the server's pings or stream heartbeats. */
  ping_interval?: number;
  /** The secret of `POST /session/<session>` on the one-way doors. */
  session?: string;
  id?: number;
}

export interface ReplyFrame { type: "reply"; id: number; [field: string]: unknown }
export interface PongFrame { type: "pong"; id: number }
export interface ErrorFrame { type: "error"; id?: number; code: ErrorCode; message: string }

export interface MessageFrame {
  type: "message";
  channel: string;
  offset: number;
  epoch: string;
  data: unknown;
  /** On the one-way doors, for channels named in the URL. */
  cursor?: string;
}

export interface JoinFrame { type: "join"; channel: string; member: Member }
export interface LeaveFrame { type: "leave"; channel: string; member: Member }
export interface SubscribedFrame { type: "subscribed"; channel: string; offset: number; epoch: string; recovered?: boolean }
export interface UnsubscribedFrame { type: "unsubscribed"; channel: string; reason?: string }
export interface PeerJoinedFrame { type: "peer_joined"; room: string; peer: Peer }
export interface PeerLeftFrame { type: "peer_left"; room: string; peer: string }
export interface PeerUpdatedFrame { type: "peer_updated"; room: string; peer: Peer }
export interface SignalFrame { type: "signal"; room: string; from: string; data: unknown }
export interface DisconnectFrame { type: "disconnect"; code: ErrorCode; message?: string; reconnect?: boolean }

export type ServerFrame =
  | ConnectedFrame
  | ReplyFrame
  | PongFrame
  | ErrorFrame
  | MessageFrame
  | JoinFrame
  | LeaveFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | PeerJoinedFrame
  | PeerLeftFrame
  | PeerUpdatedFrame
  | SignalFrame
  | DisconnectFrame;

/** Frames that are not answers to a command. */
export type PushFrame = Exclude<ServerFrame, ConnectedFrame | ReplyFrame | PongFrame | ErrorFrame>;

// ---- replies --------------------------------------------------------------------------------

export interface SubscribeReply { channel: string; offset: number; epoch: string; recovered?: boolean }
export interface JoinRoomReply { room?: string; peer: string; peers: Peer[]; ice_servers: RTCIceServerLike[] }

/** An RTCIceServer as `join_room` hands it out (a plain object, usable in Node too). */
export interface RTCIceServerLike {
  urls: string | string[];
  username?: string;
  credential?: string;
}

// ---- what applications get ------------------------------------------------------------------

/** A message as `message` events and `history()` hand it over. */
export interface Message {
  channel: string;
  data: unknown;
  offset: number;
  epoch: string;
}

/** What `subscribed` events carry, after every (re)subscribe. */
export interface SubscribedInfo {
  offset: number;
  epoch: string;
  /**
   * Whether every message after the position the subscription resumed from was still in
   * history (so nothing was lost). False for a first subscribe without `since`: nothing was
   * recovered.
   */
  recovered: boolean;
}

export interface HistoryResult {
  messages: Message[];
  offset: number;
  epoch: string;
}

export interface PublishResult {
  offset: number;
  epoch: string;
}

export interface SignalEvent {
  from: string;
  data: unknown;
}

export type TransportName = "websocket" | "sse" | "http-stream" | "long-poll";

export type ConnectionState = "connecting" | "connected" | "disconnected";

/** Why the client disconnected (`disconnected` event): a server decision or a failure. */
export interface DisconnectInfo extends ErrorInfo {
  /** Whether the client goes on trying by itself. */
  reconnect: boolean;
}

export type LogLevel = "debug" | "info" | "warn" | "error";

/** A logging hook: gets every line the SDK logs, with structured details when there are any. */
export type Logger = (level: LogLevel, message: string, details?: unknown) => void;
