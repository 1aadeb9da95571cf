// The WebRTC helper on top of a room: one RTCPeerConnection per other peer (a mesh, for a few
// peers), with the offer/answer/ICE exchange carried by the room's `signal` frames as
// `{ sdp }` and `{ candidate }` (the format of the README's example, so a hand-written peer
// can call an SDK one). It follows the "perfect negotiation" pattern: either side may offer at
// any time; when both do at once, the polite one (the greater peer id) yields.

import { Emitter } from "./emitter.js";
import type { Logger, RTCIceServerLike } from "./types.js";

export interface TrackEvent {
  /** The peer id the track comes from. */
  peer: string;
  track: MediaStreamTrack;
  streams: readonly MediaStream[];
  call: Call;
}

export interface CallEvents {
  track: TrackEvent;
  /** The RTCPeerConnection's `connectionState`. */
  state: RTCPeerConnectionState;
  /** The call is over (hung up, the peer left, or the room was left). */
  close: void;
}

export interface CallOptions {
  /** Merged into every RTCPeerConnection's configuration (after the room's `iceServers`). */
  rtcConfig?: RTCConfiguration;
}

/** What calls need from their room. */
export interface CallHost {
  readonly self: string;
  iceServers(): RTCIceServerLike[];
  localStream(): MediaStream | null;
  rtcConfig(): RTCConfiguration | undefined;
  send(peer: string, data: unknown): void;
  onTrack(event: TrackEvent): void;
  onClose(call: Call): void;
  log: Logger;
}

type Signal = { sdp?: RTCSessionDescriptionInit; candidate?: RTCIceCandidateInit };

/** Whether a signal's data is one of ours (`{ sdp }` or `{ candidate }`). */
export function isRtcSignal(data: unknown): data is Signal {
  return !!data && typeof data === "object" && ("sdp" in data || "candidate" in data);
}

export class Call extends Emitter<CallEvents> {
  readonly peer: string;
  readonly pc: RTCPeerConnection;
  /** The polite side yields when both offer at once. */
  readonly polite: boolean;
  private makingOffer = false;
  private ignoreOffer = false;
  private tracksAdded = false;
  private pendingCandidates: RTCIceCandidateInit[] = [];
  private signals: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly host: CallHost,
    peer: string,
  ) {
    super();
    this.peer = peer;
    this.polite = host.self > peer;
    const RTC = (globalThis as { RTCPeerConnection?: typeof RTCPeerConnection }).RTCPeerConnection;
    if (!RTC) throw new Error("no RTCPeerConnection here: calls need a browser (or a WebRTC implementation installed as globalThis.RTCPeerConnection)");
    this.pc = new RTC({ iceServers: host.iceServers() as RTCIceServer[], ...host.rtcConfig() });
    const pc = this.pc;

    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.host.send(peer, { candidate: candidate.toJSON() });
    };
    pc.ontrack = (e) => {
      const event: TrackEvent = { peer, track: e.track, streams: e.streams, call: this };
      this.emit("track", event);
      this.host.onTrack(event);
    };
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        this.host.send(peer, { sdp: pc.localDescription });
      } catch (e) {
        this.host.log("warn", `call with ${peer}: making an offer failed`, e);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      this.emit("state", pc.connectionState);
      // ICE restart brings a call back after a network change; either side may ask for it.
      if (pc.connectionState === "failed") pc.restartIce();
    };
  }

  protected override onListenerError(event: PropertyKey, error: unknown): void {
    this.host.log("error", `a "${String(event)}" listener of the call with ${this.peer} threw`, error);
  }

  /** Starts the call from this side: adding the tracks makes the first offer. */
  start(): void {
    this.addLocalTracks(true);
  }

  /** The local stream changed: send what it has now. */
  updateTracks(): void {
    if (!this.tracksAdded || this.closed) return;
    const stream = this.host.localStream();
    const wanted = new Set(stream ? stream.getTracks() : []);
    for (const sender of this.pc.getSenders()) {
      if (sender.track && !wanted.has(sender.track)) this.pc.removeTrack(sender);
    }
    const sending = new Set(this.pc.getSenders().map((s) => s.track));
    for (const track of wanted) if (!sending.has(track)) this.pc.addTrack(track, stream!);
  }

  /** A `{ sdp }` or `{ candidate }` from the peer; handled one at a time, in order. */
  signal(data: Signal): void {
    this.signals = this.signals.then(() => this.onSignal(data)).catch((e) => {
      this.host.log("warn", `call with ${this.peer}: a signal failed`, e);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pc.onicecandidate = this.pc.ontrack = this.pc.onnegotiationneeded = this.pc.onconnectionstatechange = null;
    this.pc.close();
    this.host.onClose(this);
    this.emit("close", undefined);
  }

  private addLocalTracks(offering: boolean): void {
    if (this.tracksAdded) return;
    this.tracksAdded = true;
    const stream = this.host.localStream();
    if (stream) for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    if (!offering) return;
    // Receive audio and video even with nothing (or one kind only) to send.
    const kinds = new Set(this.pc.getTransceivers().map((t) => t.receiver.track.kind));
    for (const kind of ["audio", "video"]) {
      if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: "recvonly" });
    }
  }

  private async onSignal(data: Signal): Promise<void> {
    if (this.closed) return;
    const pc = this.pc;
    if (data.sdp) {
      const description = data.sdp;
      const collision = description.type === "offer" && (this.makingOffer || pc.signalingState !== "stable");
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) {
        this.host.log("debug", `call with ${this.peer}: both offered, ignoring theirs`);
        return;
      }
      await pc.setRemoteDescription(description); // rolls back our own offer if we are polite
      for (const candidate of this.pendingCandidates.splice(0)) await this.addCandidate(candidate);
      if (description.type === "offer") {
        this.addLocalTracks(false); // takes over the transceivers the offer made
        await pc.setLocalDescription();
        this.host.send(this.peer, { sdp: pc.localDescription });
      }
    } else if (data.candidate) {
      if (!pc.remoteDescription) this.pendingCandidates.push(data.candidate);
      else await this.addCandidate(data.candidate);
    }
  }

  private async addCandidate(candidate: RTCIceCandidateInit): Promise<void> {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (e) {
      if (!this.ignoreOffer) this.host.log("debug", `call with ${this.peer}: a candidate was refused`, e);
    }
  }
}
