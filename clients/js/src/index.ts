// switchboard-client: the public surface (CLIENT-SDK.md).

export { Switchboard, DEFAULT_TRANSPORTS } from "./client.js";
export type { SwitchboardOptions, SwitchboardEvents, SubscribeOptions, JoinRoomOptions } from "./client.js";
export { Subscription } from "./subscription.js";
export type { SubscriptionEvents, SubscriptionState } from "./subscription.js";
export { Room } from "./room.js";
export type { RoomEvents, RoomState } from "./room.js";
export { Call } from "./rtc.js";
export type { CallEvents, CallOptions, TrackEvent } from "./rtc.js";
export { SwitchboardError } from "./errors.js";
export type { Clock } from "./timing.js";
export type {
  Transport,
  TransportClosed,
  TransportContext,
  TransportEvents,
  TransportFactory,
  WebSocketConstructor,
} from "./transports/transport.js";
export type * from "./types.js";
