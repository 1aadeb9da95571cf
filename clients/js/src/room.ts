// One room membership (WebRTC signaling, PROTOCOL.md §3): its roster, its signals, and its
// rejoin after a reconnect (a new connection is a new peer id; the roster is compared with the
// new one so `peer_joined` / `peer_left` keep it true). Calls (rtc.ts) hang off it.

import { Emitter } from "./emitter.js";
import { isTransient, SwitchboardError, toSwitchboardError } from "./errors.js";
import { Call, isRtcSignal, type CallOptions, type TrackEvent } from "./rtc.js";
import type { Connection } from "./connection.js";
import type {
  ErrorInfo,
  JoinRoomReply,
  Logger,
  Peer,
  PeerJoinedFrame,
  PeerLeftFrame,
  PeerUpdatedFrame,
  RTCIceServerLike,
  SignalEvent,
  SignalFrame,
} from "./types.js";

export interface RoomEvents {
  peer_joined: Peer;
  peer_left: string;
  peer_updated: Peer;
  signal: SignalEvent;
  /** After a reconnect the room was joined again, under a new peer id. */
  rejoined: { peer: string; previous: string };
  error: ErrorInfo;
  /** A call started (placed with `call()` or answered). */
  call: Call;
  /** A remote track of any call. */
  track: TrackEvent;
}

export type RoomState = "joining" | "joined" | "left";

export interface RoomHost {
  connection: Connection;
  forget(room: Room): void;
  log: Logger;
  retryDelay(attempt: number): number;
  setTimer(fn: () => void, ms: number): unknown;
}

type RoomFrame = PeerJoinedFrame | PeerLeftFrame | PeerUpdatedFrame | SignalFrame;

export class Room extends Emitter<RoomEvents> {
  readonly name: string;
  state: RoomState = "joining";
  /** Own peer id (it changes when the room is joined again after a reconnect). */
  peer = "";
  /** The other peers, in join order. */
  peers: Peer[] = [];
  iceServers: RTCIceServerLike[] = [];

  private meta: unknown;
  private generation = 0;
  private held: RoomFrame[] | null = null;
  private failures = 0;
  private firstJoin: { resolve(room: Room): void; reject(e: SwitchboardError): void } | null;
  private readonly callMap = new Map<string, Call>();
  private callsOn = false;
  private mesh = false;
  private stream: MediaStream | null = null;
  private rtcConfig: RTCConfiguration | undefined;

  constructor(
    private readonly host: RoomHost,
    name: string,
    meta: unknown,
    firstJoin: Room["firstJoin"],
  ) {
    super();
    this.name = name;
    this.meta = meta;
    this.firstJoin = firstJoin;
  }

  protected override onListenerError(event: PropertyKey, error: unknown): void {
    this.host.log("error", `a "${String(event)}" listener of room ${this.name} threw`, error);
  }

  // ---- the application's calls ---------------------------------------------------------------

  /** Sends `data` to `to`, or to every other peer. Resolves when the server took it. */
  signal(data: unknown, to?: string): Promise<void> {
    const sent = this.command({ type: "signal", room: this.name, data, ...(to !== undefined ? { to } : {}) });
    // The contract's `room.signal(...)` is often not awaited: a failure is logged, not thrown
    // at nobody (awaiting the promise still sees it).
    sent.catch((e: SwitchboardError) => this.host.log("warn", `signal in ${this.name} failed: ${e.code}: ${e.message}`));
    return sent;
  }

  async updateMeta(meta: unknown): Promise<void> {
    await this.command({ type: "update_meta", room: this.name, meta });
    this.meta = meta;
  }

  async leave(): Promise<void> {
    if (this.state === "left") return;
    const wasJoined = this.state === "joined";
    this.end();
    if (wasJoined && this.host.connection.state === "connected") {
      await this.host.connection.request({ type: "leave_room", room: this.name }, { bound: true }).catch(() => {});
    }
  }

  // ---- calls (WebRTC helper) -----------------------------------------------------------------

  /** The calls in progress, by peer id. */
  get calls(): ReadonlyMap<string, Call> {
    return this.callMap;
  }

  /**
   * What every call sends (null: receive only). Setting it also turns on answering: from then
   * on an offer from another peer is answered by itself.
   */
  setLocalStream(stream: MediaStream | null, options: CallOptions = {}): void {
    this.callsOn = true;
    this.stream = stream;
    if (options.rtcConfig) this.rtcConfig = options.rtcConfig;
    for (const call of this.callMap.values()) call.updateTracks();
  }

  /** Calls `peer` (or answers the existing call). Turns on answering too. */
  call(peer: string, options: CallOptions = {}): Call {
    this.callsOn = true;
    if (options.rtcConfig) this.rtcConfig = options.rtcConfig;
    const existing = this.callMap.get(peer);
    if (existing) return existing;
    const call = this.newCall(peer);
    call.start();
    return call;
  }

  /**
   * Calls every peer in the room: what the newcomer of a mesh does (the others answer). After
   * a reconnect, the room calls everyone again by itself.
   */
  callAll(options: CallOptions = {}): Call[] {
    this.mesh = true;
    return this.peers.map((p) => this.call(p.peer, options));
  }

  hangUp(peer: string): void {
    this.callMap.get(peer)?.close();
  }

  // ---- driven by the client ------------------------------------------------------------------

  /** Joins on the current connection (again, after a reconnect). */
  async join(): Promise<void> {
    if (this.state === "left") return;
    const generation = ++this.generation;
    this.held = [];
    let reply: JoinRoomReply;
    try {
      reply = (await this.host.connection.request(
        { type: "join_room", room: this.name, ...(this.meta !== undefined ? { meta: this.meta } : {}) },
        { bound: true },
      )) as unknown as JoinRoomReply;
    } catch (e) {
      if (generation === this.generation) this.refused(toSwitchboardError(e));
      return;
    }
    if (generation !== this.generation) return; // left, or a newer join is under way
    this.failures = 0;
    const previous = this.peer;
    const rejoin = this.state === "joined";
    this.peer = reply.peer;
    this.iceServers = reply.ice_servers ?? [];
    this.state = "joined";
    const fresh = reply.peers ?? [];
    if (rejoin) {
      // Our old peer id is gone, and so are the calls made under it.
      for (const call of [...this.callMap.values()]) call.close();
      const now = new Set(fresh.map((p) => p.peer));
      const before = new Set(this.peers.map((p) => p.peer));
      const gone = this.peers.filter((p) => !now.has(p.peer));
      this.peers = fresh.slice();
      for (const p of gone) this.emit("peer_left", p.peer);
      for (const p of fresh) if (!before.has(p.peer)) this.emit("peer_joined", p);
      this.emit("rejoined", { peer: this.peer, previous });
      if (this.mesh) this.callAll();
    } else {
      this.peers = fresh.slice();
      const first = this.firstJoin;
      this.firstJoin = null;
      first?.resolve(this);
    }
    const held = this.held ?? [];
    this.held = null;
    for (const frame of held) this.handle(frame);
  }

  /** The first join did not succeed in time: give up on the room. */
  abandon(error: SwitchboardError): void {
    const first = this.firstJoin;
    if (!first) return;
    this.firstJoin = null;
    this.end();
    first.reject(error);
  }

  /** The connection dropped: the next `join()` joins again. */
  interrupted(): void {
    if (this.state === "left") return;
    this.generation++;
    this.held = null;
  }

  handle(frame: RoomFrame): void {
    if (this.state === "left") return;
    if (this.held) {
      this.held.push(frame);
      return;
    }
    switch (frame.type) {
      case "peer_joined": {
        // The roster may already have it (both joined at the same moment): idempotent.
        const i = this.peers.findIndex((p) => p.peer === frame.peer.peer);
        if (i >= 0) {
          this.peers[i] = frame.peer;
          return;
        }
        this.peers.push(frame.peer);
        this.emit("peer_joined", frame.peer);
        return;
      }
      case "peer_left": {
        const i = this.peers.findIndex((p) => p.peer === frame.peer);
        this.callMap.get(frame.peer)?.close();
        if (i < 0) return;
        this.peers.splice(i, 1);
        this.emit("peer_left", frame.peer);
        return;
      }
      case "peer_updated": {
        const i = this.peers.findIndex((p) => p.peer === frame.peer.peer);
        if (i >= 0) this.peers[i] = frame.peer;
        this.emit("peer_updated", frame.peer);
        return;
      }
      case "signal":
        if (this.callsOn && isRtcSignal(frame.data)) this.rtcSignal(frame.from, frame.data);
        else this.emit("signal", { from: frame.from, data: frame.data });
    }
  }

  // ---- inside ------------------------------------------------------------------------------

  private command(body: Parameters<Connection["request"]>[0]): Promise<void> {
    if (this.state !== "joined") {
      return Promise.reject(new SwitchboardError("unavailable", `not in room ${this.name} right now (${this.state})`));
    }
    return this.host.connection.request(body, { bound: true }).then(() => undefined);
  }

  private rtcSignal(from: string, data: { sdp?: RTCSessionDescriptionInit; candidate?: RTCIceCandidateInit }): void {
    let call = this.callMap.get(from);
    if (!call) {
      // Only an offer starts a call; stray candidates of a call we closed are dropped.
      if (data.sdp?.type !== "offer") return;
      call = this.newCall(from);
    }
    call.signal(data);
  }

  private newCall(peer: string): Call {
    const room = this;
    const call = new Call(
      {
        self: this.peer,
        iceServers: () => room.iceServers,
        localStream: () => room.stream,
        rtcConfig: () => room.rtcConfig,
        send: (to, data) => void room.signal(data, to).catch(() => {}),
        onTrack: (event) => room.emit("track", event),
        onClose: (c) => {
          if (room.callMap.get(c.peer) === c) room.callMap.delete(c.peer);
        },
        log: this.host.log,
      },
      peer,
    );
    this.callMap.set(peer, call);
    this.emit("call", call);
    return call;
  }

  private refused(error: SwitchboardError): void {
    if (error.code === "disconnected") return; // joined again on the next connection
    if (error.code === "bad_request" && /already in room/.test(error.message)) {
      // A repeated request (see Subscription): leave and join again, to learn our peer id.
      this.host.connection.request({ type: "leave_room", room: this.name }, { bound: true }).then(
        () => this.join(),
        () => {},
      );
      return;
    }
    if (isTransient(error.code)) {
      this.emit("error", error.toJSON());
      const generation = this.generation;
      this.host.setTimer(() => {
        if (generation === this.generation && this.host.connection.state === "connected") void this.join();
      }, this.host.retryDelay(this.failures++));
      return;
    }
    this.host.log("warn", `join_room ${this.name} refused: ${error.code}: ${error.message}`);
    const first = this.firstJoin;
    this.firstJoin = null;
    this.end();
    if (first) first.reject(error);
    else this.emit("error", error.toJSON());
  }

  private end(): void {
    this.state = "left";
    this.generation++;
    this.held = null;
    for (const call of [...this.callMap.values()]) call.close();
    const first = this.firstJoin;
    this.firstJoin = null;
    first?.reject(new SwitchboardError("disconnected", `left room ${this.name}`));
    this.host.forget(this);
  }
}
