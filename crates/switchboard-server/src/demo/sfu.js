// An SFU room member with nothing but the browser (spec §9): one peer connection to the
// server (`POST /rtc`) carries this member's camera and microphone up once and every other
// member's media down; its `switchboard` data channel is the connection's door, where
// `join_room` with `"media": "sfu"` joins the room and `signal` frames from and to the peer
// "sfu" renegotiate as members come and go. The server is the impolite side of perfect
// negotiation: when both offer at once, this side rolls its offer back and answers.

const SFU = 'sfu';

export class SfuMember {
  /**
   * `room`, `token` (optional), `meta` (shown to the others), `rtcConfig` (ICE servers and
   * policy), and callbacks: `onTrack({peer, track, receiver})` for each member's track,
   * `onPeerJoined(p)`, `onPeerLeft(id)`, `onPeerUpdated(p)`, `onClose(reason)`, `log(...)`.
   */
  constructor({ room, token, meta, rtcConfig, onTrack, onPeerJoined, onPeerLeft, onPeerUpdated, onClose, log }) {
    Object.assign(this, { room, token, meta, rtcConfig });
    this.on = { onTrack, onPeerJoined, onPeerLeft, onPeerUpdated, onClose };
    this.log = log || (() => {});
    this.pc = null;
    this.dc = null;
    this.resource = null;
    this.peer = null;
    this.peers = [];
    this.iceServers = [];
    this.nextId = 1;
    this.waiting = new Map(); // command id -> {resolve, reject}
    this.received = new Map(); // received track id -> {peer, track}: whose track it is
    this.making = false;      // this side is making an offer
    this.queue = Promise.resolve(); // signals are handled one at a time, in order
  }

  get auth() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** Opens the link with `stream`'s tracks (or none) and joins the room's SFU. */
  async join(stream) {
    const pc = this.pc = new RTCPeerConnection(this.rtcConfig);
    const dc = this.dc = pc.createDataChannel('switchboard');
    for (const track of stream ? stream.getTracks() : []) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    pc.ontrack = ({ track, streams, receiver }) => {
      // The SFU names each track's stream after the member who sends it.
      const peer = streams[0] ? streams[0].id : null;
      this.received.set(track.id, { peer, track });
      this.log('track', track.kind, 'of', peer);
      if (this.on.onTrack) this.on.onTrack({ peer, track, receiver });
    };
    const connected = new Promise((resolve, reject) => {
      dc.onmessage = (e) => {
        const frame = JSON.parse(e.data);
        if (frame.type === 'connected') resolve(frame);
        else this.frame(frame);
      };
      dc.onclose = () => {
        reject(new Error('the data channel closed'));
        for (const { reject: fail } of this.waiting.values()) fail(new Error('the data channel closed'));
        this.waiting.clear();
        if (this.on.onClose) this.on.onClose('closed');
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    const res = await fetch('/rtc', {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...this.auth },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) throw new Error(`POST /rtc answered ${res.status}: ${await res.text()}`);
    this.resource = res.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    await connected;
    const reply = await this.command({ type: 'join_room', room: this.room, meta: this.meta, media: SFU });
    this.peer = reply.peer;
    this.peers = reply.peers;
    this.iceServers = reply.ice_servers;
    return reply;
  }

  /** Sends a command on the door; resolves with its reply, rejects with its error. */
  command(frame) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.dc.send(JSON.stringify({ ...frame, id }));
    });
  }

  /** Publishes one more track (renegotiated by this side's own offer). */
  async addTrack(track, stream) {
    this.pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    await this.offer();
  }

  async offer() {
    this.making = true;
    try {
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await this.signal({ sdp: this.pc.localDescription });
    } catch (e) {
      // Refused while the SFU's own offer was on its way: that offer rolls ours back, and
      // ours is made again once it is answered.
      this.log('offer refused:', e.message);
      this.retry = true;
    } finally {
      this.making = false;
    }
  }

  signal(data) {
    return this.command({ type: 'signal', room: this.room, to: SFU, data });
  }

  frame(frame) {
    if (frame.id !== undefined && this.waiting.has(frame.id)) {
      const { resolve, reject } = this.waiting.get(frame.id);
      this.waiting.delete(frame.id);
      if (frame.type === 'error') reject(Object.assign(new Error(frame.message), { code: frame.code }));
      else resolve(frame);
      return;
    }
    if (frame.room !== this.room) return;
    if (frame.type === 'signal' && frame.from === SFU && frame.data && frame.data.sdp) {
      this.queue = this.queue.then(() => this.describe(frame.data.sdp)).catch((e) => this.log('signal failed:', e.message));
    } else if (frame.type === 'peer_joined') {
      if (this.on.onPeerJoined) this.on.onPeerJoined(frame.peer);
    } else if (frame.type === 'peer_left') {
      if (this.on.onPeerLeft) this.on.onPeerLeft(frame.peer);
    } else if (frame.type === 'peer_updated') {
      if (this.on.onPeerUpdated) this.on.onPeerUpdated(frame.peer);
    } else if (frame.type === 'disconnect') {
      if (this.on.onClose) this.on.onClose(`${frame.code}: ${frame.message || ''}`);
    }
  }

  /** A description from the SFU: an offer (answered; it rolls back one of ours) or an answer. */
  async describe(sdp) {
    if (sdp.type === 'offer') {
      // Setting a remote offer while ours is pending rolls ours back (the polite side).
      await this.pc.setRemoteDescription(sdp);
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      await this.signal({ sdp: this.pc.localDescription });
      if (this.retry) {
        this.retry = false;
        await this.offer();
      }
    } else if (sdp.type === 'answer') {
      await this.pc.setRemoteDescription(sdp);
    }
  }

  /** The receivers of `peer`'s media (its tracks that are still live). */
  receivers(peer, kind) {
    if (!this.pc) return [];
    return this.pc.getTransceivers()
      .filter((t) => !t.stopped && t.currentDirection !== 'stopped' && t.currentDirection !== 'inactive')
      .filter((t) => t.receiver.track.kind === kind && this.streamOf(t) === peer)
      .map((t) => t.receiver);
  }

  /** The member whose media a transceiver receives. */
  streamOf(transceiver) {
    return this.received.get(transceiver.receiver.track.id)?.peer;
  }

  /** Every track received from `peer` so far, live or ended. */
  tracksOf(peer) {
    return [...this.received.values()].filter((r) => r.peer === peer).map((r) => r.track);
  }

  async leave() {
    if (this.dc && this.dc.readyState === 'open') {
      await this.command({ type: 'leave_room', room: this.room }).catch(() => {});
    }
    if (this.resource) await fetch(this.resource, { method: 'DELETE', headers: this.auth }).catch(() => {});
    if (this.pc) this.pc.close();
  }
}
