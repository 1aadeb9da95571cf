// switchboard-client 0.1.0 (Apache-2.0): built from clients/js/src; do not edit.

// src/emitter.ts
var Emitter = class {
  constructor() {
    this.listeners = /* @__PURE__ */ new Map();
  }
  /** Called with an error a listener threw; subclasses send it to the SDK's logger. */
  onListenerError(event, error) {
    console.error(`switchboard: a listener of "${String(event)}" threw`, error);
  }
  on(event, listener) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return this;
  }
  once(event, listener) {
    const wrapper = (payload) => {
      this.off(event, wrapper);
      listener(payload);
    };
    return this.on(event, wrapper);
  }
  off(event, listener) {
    if (!listener) this.listeners.delete(event);
    else this.listeners.get(event)?.delete(listener);
    return this;
  }
  listenerCount(event) {
    return this.listeners.get(event)?.size ?? 0;
  }
  emit(event, payload) {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (e) {
        this.onListenerError(event, e);
      }
    }
  }
};

// src/errors.ts
var SwitchboardError = class extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
  }
  /** A plain `{ code, message }` (for events and logs). */
  toJSON() {
    return { code: this.code, message: this.message };
  }
};
var TRANSIENT = /* @__PURE__ */ new Set(["rate_limited", "unavailable", "internal", "timeout", "transport"]);
function isTransient(code) {
  return TRANSIENT.has(code);
}
function toSwitchboardError(e, fallback = "transport") {
  if (e instanceof SwitchboardError) return e;
  if (e && typeof e === "object" && "code" in e && "message" in e && typeof e.code === "string") {
    return new SwitchboardError(e.code, String(e.message));
  }
  return new SwitchboardError(fallback, e instanceof Error ? e.message : String(e));
}

// src/timing.ts
var realClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle)
};
function backoffDelay(attempt, min, max, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  const delay = ceiling / 2 + random() * (ceiling / 2);
  return Math.round(Math.max(min, Math.min(max, delay)));
}

// src/token.ts
function tokenExpiry(token) {
  if (!token) return void 0;
  const parts = token.split(".");
  if (parts.length !== 3) return void 0;
  try {
    const json = base64UrlDecode(parts[1]);
    const claims = JSON.parse(json);
    return typeof claims.exp === "number" ? claims.exp : void 0;
  } catch {
    return void 0;
  }
}
function base64UrlDecode(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}
function refreshMargin(lifetimeMs) {
  return Math.max(1e3, Math.min(3e4, lifetimeMs / 4));
}
function isStale(token, nowMs) {
  const exp = tokenExpiry(token);
  return exp !== void 0 && exp * 1e3 - nowMs < 1e3;
}

// src/connection.ts
var DEFAULT_PING_INTERVAL = 20;
var POLL_TIMEOUT = 25;
var Connection = class extends Emitter {
  constructor(opts) {
    super();
    this.opts = opts;
    this.state = "disconnected";
    /** The transport in use while connected. */
    this.transportName = null;
    /** Commands to send as a best-effort goodbye when a long-poll session is abandoned. */
    this.farewell = () => [];
    this.tokenFetch = null;
    this.forceNewToken = false;
    this.wanted = false;
    /** disconnect() was called (or the server ended it): calls fail at once until connect(). */
    this.stopped = false;
    this.lastTokenRefusal = -Infinity;
    this.seq = 0;
    this.link = null;
    this.settled = null;
    this.settledFailures = 0;
    this.candidate = 0;
    this.retries = 0;
    this.nextId = 0;
    this.requests = /* @__PURE__ */ new Map();
    this.outbox = [];
    this.flushScheduled = false;
    this.lastActivity = 0;
    this.pingOut = false;
    this.timers = {};
    this.openFailures = [];
    this.token = opts.token;
  }
  onListenerError(event, error) {
    this.opts.log("error", `a "${String(event)}" listener threw`, error);
  }
  // ---- public --------------------------------------------------------------------------------
  connect() {
    if (this.wanted) return;
    this.wanted = true;
    this.stopped = false;
    this.retries = 0;
    this.candidate = 0;
    this.openFailures = [];
    void this.attempt();
  }
  disconnect(reason = { code: "disconnected", message: "disconnect() was called", reconnect: false }) {
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
  request(body, { bound = false, timeout = this.opts.timeout } = {}) {
    return new Promise((resolve, reject) => {
      if (bound && !this.link?.connected) {
        reject(new SwitchboardError("disconnected", "not connected"));
        return;
      }
      if (!bound && this.stopped) {
        reject(new SwitchboardError("disconnected", "disconnected: call connect() first"));
        return;
      }
      const id = ++this.nextId;
      const request = { id, body, bound, sent: false, resolve, reject };
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
  currentToken() {
    return this.token;
  }
  // ---- attempts ------------------------------------------------------------------------------
  pickTransport() {
    if (this.settled) return this.settled;
    return this.opts.transports[this.candidate % this.opts.transports.length];
  }
  async attempt() {
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
    const link = { seq, name, transport: null, connected: false, disconnect: null };
    this.link = link;
    link.transport = factory.open(ctx, {
      frame: (frame) => this.onFrame(seq, frame),
      activity: () => {
        if (this.link?.seq === seq) this.lastActivity = this.opts.clock.now();
      },
      closed: (why) => this.onClosed(seq, why)
    });
    this.timers.open = this.opts.clock.setTimeout(() => {
      if (this.link?.seq === seq && !this.link.connected) {
        this.drop(seq, { code: "timeout", message: `${name}: no connected frame within ${this.opts.timeout} ms` });
      }
    }, this.opts.timeout);
  }
  transportContext() {
    const { baseUrl: baseUrl2, WebSocket, fetch: fetch2, log } = this.opts;
    return { baseUrl: baseUrl2, WebSocket, fetch: fetch2, log, token: () => this.token, pollTimeout: POLL_TIMEOUT };
  }
  fetchToken() {
    if (!this.tokenFetch) {
      const getToken = this.opts.getToken;
      this.tokenFetch = (async () => {
        try {
          const token = await getToken();
          this.token = token || void 0;
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
  drop(seq, why) {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    link.transport?.close(this.farewellCommands());
    this.onClosed(seq, why);
  }
  openFailed(name, why) {
    this.openFailures.push(`${name}: ${why.message}`);
    if (this.settled) {
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
  scheduleRetry() {
    if (!this.wanted) return;
    const delay = backoffDelay(this.retries++, this.opts.minReconnectDelay, this.opts.maxReconnectDelay, this.opts.random);
    this.opts.log("debug", `reconnecting in ${delay} ms`);
    this.setState("connecting");
    this.timers.retry = this.opts.clock.setTimeout(() => void this.attempt(), delay);
  }
  // ---- a transport's events ------------------------------------------------------------------
  onFrame(seq, frame) {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    if (!link.connected) {
      if (frame.type === "connected") this.onConnected(link, frame);
      else if (frame.type === "error" && frame.id === void 0) link.disconnect = { code: frame.code, message: frame.message, reconnect: true };
      else if (frame.type === "disconnect") link.disconnect = { code: frame.code, message: frame.message ?? frame.code, reconnect: frame.reconnect !== false };
      return;
    }
    switch (frame.type) {
      case "reply":
      case "pong":
        this.settle(frame.id, frame, null);
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
  onConnected(link, frame) {
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
    this.armWatchdog(link.seq, (frame.ping_interval ?? DEFAULT_PING_INTERVAL) * 1e3);
    this.scheduleRefresh(frame.exp);
    this.emit("connected", frame);
    for (const request of [...this.requests.values()].sort((a, b) => a.id - b.id)) {
      if (!request.sent) this.sendRequest(request);
    }
  }
  onClosed(seq, why) {
    const link = this.link;
    if (!link || link.seq !== seq) return;
    this.link = null;
    this.transportName = null;
    this.clearTimers();
    const reason = link.disconnect ?? { ...why, reconnect: true };
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
        this.forceNewToken = true;
        const now = this.opts.clock.now();
        const again = now - this.lastTokenRefusal < 5e3;
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
  sendRequest(request) {
    request.sent = true;
    this.outbox.push({ ...request.body, id: request.id });
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      const commands = this.outbox.splice(0);
      if (commands.length && this.link?.connected) this.link.transport?.send(commands);
    });
  }
  settle(id, reply, error) {
    const request = this.requests.get(id);
    if (!request) return;
    this.requests.delete(id);
    this.opts.clock.clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(reply);
  }
  rejectAll(error) {
    for (const request of this.requests.values()) {
      this.opts.clock.clearTimeout(request.timer);
      request.reject(error);
    }
    this.requests.clear();
  }
  farewellCommands() {
    return this.farewell().map((c) => ({ ...c, id: ++this.nextId }));
  }
  // ---- keep-alive and token refresh ----------------------------------------------------------
  /**
   * Checks that the server is still there: every stream door sends a heartbeat each ping
   * interval and a poll answers within its timeout; a browser WebSocket cannot see the
   * server's pings, so there it sends a `ping` command when nothing came for an interval.
   * Nothing for two intervals (and 5 s): the link is dead, whatever the OS thinks.
   */
  armWatchdog(seq, pingMs) {
    const every = Math.max(250, Math.min(5e3, pingMs / 4));
    const deadMs = Math.max(2 * pingMs + 5e3, this.link?.name === "long-poll" ? (POLL_TIMEOUT + 10) * 1e3 : 0);
    const check = () => {
      const link = this.link;
      if (!link || link.seq !== seq) return;
      const idle = this.opts.clock.now() - this.lastActivity;
      if (idle >= deadMs) {
        this.drop(seq, { code: "transport", message: `nothing from the server for ${Math.round(idle / 1e3)} s` });
        return;
      }
      if (link.name === "websocket" && idle >= pingMs && !this.pingOut) {
        this.pingOut = true;
        this.request({ type: "ping" }, { bound: true }).then(
          () => this.pingOut = false,
          () => this.pingOut = false
        );
      }
      this.timers.watchdog = this.opts.clock.setTimeout(check, every);
    };
    this.timers.watchdog = this.opts.clock.setTimeout(check, every);
  }
  scheduleRefresh(exp) {
    this.opts.clock.clearTimeout(this.timers.refresh);
    if (!this.opts.getToken || typeof exp !== "number") return;
    const lifetime = exp * 1e3 - this.opts.clock.now();
    const delay = Math.max(0, lifetime - refreshMargin(lifetime));
    this.timers.refresh = this.opts.clock.setTimeout(() => void this.refresh(), delay);
  }
  /** Replaces the connection's token with a fresh one from `getToken` before it expires. */
  async refresh() {
    const seq = this.link?.seq;
    try {
      const token = await this.fetchToken();
      if (this.link?.seq !== seq || !this.link?.connected) return;
      const reply = await this.request({ type: "refresh", token }, { bound: true });
      this.opts.log("debug", `token refreshed, valid until ${String(reply.exp)}`);
      this.scheduleRefresh(typeof reply.exp === "number" ? reply.exp : void 0);
    } catch (e) {
      if (this.link?.seq !== seq || !this.link?.connected) return;
      const error = toSwitchboardError(e);
      this.opts.log("warn", `token refresh failed: ${error.code}: ${error.message}`);
      if (!isTransient(error.code) && error.code !== "unauthorized") this.emit("error", error.toJSON());
      this.timers.refresh = this.opts.clock.setTimeout(() => void this.refresh(), 2e3);
    }
  }
  clearTimers() {
    for (const handle of Object.values(this.timers)) this.opts.clock.clearTimeout(handle);
    this.timers = {};
    this.pingOut = false;
  }
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }
};

// src/rtc.ts
function isRtcSignal(data) {
  return !!data && typeof data === "object" && ("sdp" in data || "candidate" in data);
}
var Call = class extends Emitter {
  constructor(host, peer) {
    super();
    this.host = host;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.tracksAdded = false;
    this.pendingCandidates = [];
    this.signals = Promise.resolve();
    this.closed = false;
    this.peer = peer;
    this.polite = host.self > peer;
    const RTC = globalThis.RTCPeerConnection;
    if (!RTC) throw new Error("no RTCPeerConnection here: calls need a browser (or a WebRTC implementation installed as globalThis.RTCPeerConnection)");
    this.pc = new RTC({ iceServers: host.iceServers(), ...host.rtcConfig() });
    const pc = this.pc;
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.host.send(peer, { candidate: candidate.toJSON() });
    };
    pc.ontrack = (e) => {
      const event = { peer, track: e.track, streams: e.streams, call: this };
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
      if (pc.connectionState === "failed") pc.restartIce();
    };
  }
  onListenerError(event, error) {
    this.host.log("error", `a "${String(event)}" listener of the call with ${this.peer} threw`, error);
  }
  /** Starts the call from this side: adding the tracks makes the first offer. */
  start() {
    this.addLocalTracks(true);
  }
  /** The local stream changed: send what it has now. */
  updateTracks() {
    if (!this.tracksAdded || this.closed) return;
    const stream = this.host.localStream();
    const wanted = new Set(stream ? stream.getTracks() : []);
    for (const sender of this.pc.getSenders()) {
      if (sender.track && !wanted.has(sender.track)) this.pc.removeTrack(sender);
    }
    const sending = new Set(this.pc.getSenders().map((s) => s.track));
    for (const track of wanted) if (!sending.has(track)) this.pc.addTrack(track, stream);
  }
  /** A `{ sdp }` or `{ candidate }` from the peer; handled one at a time, in order. */
  signal(data) {
    this.signals = this.signals.then(() => this.onSignal(data)).catch((e) => {
      this.host.log("warn", `call with ${this.peer}: a signal failed`, e);
    });
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.onicecandidate = this.pc.ontrack = this.pc.onnegotiationneeded = this.pc.onconnectionstatechange = null;
    this.pc.close();
    this.host.onClose(this);
    this.emit("close", void 0);
  }
  addLocalTracks(offering) {
    if (this.tracksAdded) return;
    this.tracksAdded = true;
    const stream = this.host.localStream();
    if (stream) for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    if (!offering) return;
    const kinds = new Set(this.pc.getTransceivers().map((t) => t.receiver.track.kind));
    for (const kind of ["audio", "video"]) {
      if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: "recvonly" });
    }
  }
  async onSignal(data) {
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
      await pc.setRemoteDescription(description);
      for (const candidate of this.pendingCandidates.splice(0)) await this.addCandidate(candidate);
      if (description.type === "offer") {
        this.addLocalTracks(false);
        await pc.setLocalDescription();
        this.host.send(this.peer, { sdp: pc.localDescription });
      }
    } else if (data.candidate) {
      if (!pc.remoteDescription) this.pendingCandidates.push(data.candidate);
      else await this.addCandidate(data.candidate);
    }
  }
  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (e) {
      if (!this.ignoreOffer) this.host.log("debug", `call with ${this.peer}: a candidate was refused`, e);
    }
  }
};

// src/room.ts
var Room = class extends Emitter {
  constructor(host, name, meta, firstJoin) {
    super();
    this.host = host;
    this.state = "joining";
    /** Own peer id (it changes when the room is joined again after a reconnect). */
    this.peer = "";
    /** The other peers, in join order. */
    this.peers = [];
    this.iceServers = [];
    this.generation = 0;
    this.held = null;
    this.failures = 0;
    this.callMap = /* @__PURE__ */ new Map();
    this.callsOn = false;
    this.mesh = false;
    this.stream = null;
    this.name = name;
    this.meta = meta;
    this.firstJoin = firstJoin;
  }
  onListenerError(event, error) {
    this.host.log("error", `a "${String(event)}" listener of room ${this.name} threw`, error);
  }
  // ---- the application's calls ---------------------------------------------------------------
  /** Sends `data` to `to`, or to every other peer. Resolves when the server took it. */
  signal(data, to) {
    const sent = this.command({ type: "signal", room: this.name, data, ...to !== void 0 ? { to } : {} });
    sent.catch((e) => this.host.log("warn", `signal in ${this.name} failed: ${e.code}: ${e.message}`));
    return sent;
  }
  async updateMeta(meta) {
    await this.command({ type: "update_meta", room: this.name, meta });
    this.meta = meta;
  }
  async leave() {
    if (this.state === "left") return;
    const wasJoined = this.state === "joined";
    this.end();
    if (wasJoined && this.host.connection.state === "connected") {
      await this.host.connection.request({ type: "leave_room", room: this.name }, { bound: true }).catch(() => {
      });
    }
  }
  // ---- calls (WebRTC helper) -----------------------------------------------------------------
  /** The calls in progress, by peer id. */
  get calls() {
    return this.callMap;
  }
  /**
   * What every call sends (null: receive only). Setting it also turns on answering: from then
   * on an offer from another peer is answered by itself.
   */
  setLocalStream(stream, options = {}) {
    this.callsOn = true;
    this.stream = stream;
    if (options.rtcConfig) this.rtcConfig = options.rtcConfig;
    for (const call of this.callMap.values()) call.updateTracks();
  }
  /** Calls `peer` (or answers the existing call). Turns on answering too. */
  call(peer, options = {}) {
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
  callAll(options = {}) {
    this.mesh = true;
    return this.peers.map((p) => this.call(p.peer, options));
  }
  hangUp(peer) {
    this.callMap.get(peer)?.close();
  }
  // ---- driven by the client ------------------------------------------------------------------
  /** Joins on the current connection (again, after a reconnect). */
  async join() {
    if (this.state === "left") return;
    const generation = ++this.generation;
    this.held = [];
    let reply;
    try {
      reply = await this.host.connection.request(
        { type: "join_room", room: this.name, ...this.meta !== void 0 ? { meta: this.meta } : {} },
        { bound: true }
      );
    } catch (e) {
      if (generation === this.generation) this.refused(toSwitchboardError(e));
      return;
    }
    if (generation !== this.generation) return;
    this.failures = 0;
    const previous = this.peer;
    const rejoin = this.state === "joined";
    this.peer = reply.peer;
    this.iceServers = reply.ice_servers ?? [];
    this.state = "joined";
    const fresh = reply.peers ?? [];
    if (rejoin) {
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
  abandon(error) {
    const first = this.firstJoin;
    if (!first) return;
    this.firstJoin = null;
    this.end();
    first.reject(error);
  }
  /** The connection dropped: the next `join()` joins again. */
  interrupted() {
    if (this.state === "left") return;
    this.generation++;
    this.held = null;
  }
  handle(frame) {
    if (this.state === "left") return;
    if (this.held) {
      this.held.push(frame);
      return;
    }
    switch (frame.type) {
      case "peer_joined": {
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
  command(body) {
    if (this.state !== "joined") {
      return Promise.reject(new SwitchboardError("unavailable", `not in room ${this.name} right now (${this.state})`));
    }
    return this.host.connection.request(body, { bound: true }).then(() => void 0);
  }
  rtcSignal(from, data) {
    let call = this.callMap.get(from);
    if (!call) {
      if (data.sdp?.type !== "offer") return;
      call = this.newCall(from);
    }
    call.signal(data);
  }
  newCall(peer) {
    const room = this;
    const call = new Call(
      {
        self: this.peer,
        iceServers: () => room.iceServers,
        localStream: () => room.stream,
        rtcConfig: () => room.rtcConfig,
        send: (to, data) => void room.signal(data, to).catch(() => {
        }),
        onTrack: (event) => room.emit("track", event),
        onClose: (c) => {
          if (room.callMap.get(c.peer) === c) room.callMap.delete(c.peer);
        },
        log: this.host.log
      },
      peer
    );
    this.callMap.set(peer, call);
    this.emit("call", call);
    return call;
  }
  refused(error) {
    if (error.code === "disconnected") return;
    if (error.code === "bad_request" && /already in room/.test(error.message)) {
      this.host.connection.request({ type: "leave_room", room: this.name }, { bound: true }).then(
        () => this.join(),
        () => {
        }
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
  end() {
    this.state = "left";
    this.generation++;
    this.held = null;
    for (const call of [...this.callMap.values()]) call.close();
    const first = this.firstJoin;
    this.firstJoin = null;
    first?.reject(new SwitchboardError("disconnected", `left room ${this.name}`));
    this.host.forget(this);
  }
};

// src/subscription.ts
var Subscription = class extends Emitter {
  constructor(host, channel, since) {
    super();
    this.host = host;
    this.state = "subscribing";
    /** Bumped by each subscribe, so a late reply of an earlier one is ignored. */
    this.generation = 0;
    this.held = null;
    this.failures = 0;
    this.channel = channel;
    this.position = since ? { offset: since.offset, epoch: since.epoch } : null;
  }
  onListenerError(event, error) {
    this.host.log("error", `a "${String(event)}" listener of ${this.channel} threw`, error);
  }
  // ---- the application's calls ---------------------------------------------------------------
  publish(data) {
    return this.host.publish(this.channel, data);
  }
  async presence() {
    const reply = await this.host.connection.request({ type: "presence", channel: this.channel });
    return reply.members ?? [];
  }
  async history(options = {}) {
    const reply = await this.host.connection.request({ type: "history", channel: this.channel, ...options });
    const frames = reply.messages ?? [];
    return {
      messages: frames.map(toMessage),
      offset: reply.offset,
      epoch: reply.epoch
    };
  }
  unsubscribe() {
    if (this.state === "unsubscribed") return;
    this.end();
    if (this.host.connection.state === "connected") {
      this.host.connection.request({ type: "unsubscribe", channel: this.channel }, { bound: true }).catch(() => {
      });
    }
  }
  // ---- driven by the client ------------------------------------------------------------------
  /** Subscribes on the current connection, from the last delivered position. */
  async subscribe() {
    if (this.state === "unsubscribed") return;
    const generation = ++this.generation;
    this.state = "subscribing";
    this.held = [];
    const since = this.position ?? void 0;
    let reply;
    try {
      reply = await this.host.connection.request(
        { type: "subscribe", channel: this.channel, ...since ? { since } : {} },
        { bound: true }
      );
    } catch (e) {
      if (generation === this.generation) this.refused(toSwitchboardError(e));
      return;
    }
    if (generation !== this.generation) return;
    this.failures = 0;
    if (!since || since.offset !== 0 && since.epoch !== reply.epoch) {
      this.position = { offset: reply.offset, epoch: reply.epoch };
    }
    this.state = "subscribed";
    const held = this.held ?? [];
    this.held = null;
    this.emit("subscribed", {
      offset: reply.offset,
      epoch: reply.epoch,
      recovered: since ? reply.recovered === true : false
    });
    for (const frame of held) this.handle(frame);
  }
  /** The connection dropped: the next `subscribe()` resumes from `position`. */
  interrupted() {
    if (this.state === "unsubscribed") return;
    this.generation++;
    this.state = "subscribing";
    this.held = null;
  }
  /** A frame of this channel. */
  handle(frame) {
    if (this.state === "unsubscribed") return;
    if (this.held) {
      this.held.push(frame);
      return;
    }
    if (this.state !== "subscribed") return;
    if (frame.type === "join") this.emit("join", frame.member);
    else if (frame.type === "leave") this.emit("leave", frame.member);
    else this.deliver(frame);
  }
  /** The server ended this subscription (`unsubscribed` push). */
  serverUnsubscribed(reason) {
    if (this.state === "unsubscribed") return;
    this.end();
    this.emit("unsubscribed", { reason });
  }
  deliver(frame) {
    const last = this.position;
    if (last && frame.epoch === last.epoch && frame.offset <= last.offset) {
      this.host.log("debug", `${this.channel}: skipping offset ${frame.offset}, already delivered up to ${last.offset}`);
      return;
    }
    this.position = { offset: frame.offset, epoch: frame.epoch };
    this.emit("message", toMessage(frame));
  }
  refused(error) {
    if (error.code === "disconnected") return;
    if (error.code === "bad_request" && /already subscribed/.test(error.message)) {
      this.host.connection.request({ type: "unsubscribe", channel: this.channel }, { bound: true }).then(
        () => this.subscribe(),
        () => {
        }
      );
      return;
    }
    this.emit("error", error.toJSON());
    if (isTransient(error.code)) {
      const delay = this.host.retryDelay(this.failures++);
      const generation = this.generation;
      this.host.setTimer(() => {
        if (generation === this.generation && this.host.connection.state === "connected") void this.subscribe();
      }, delay);
      return;
    }
    this.host.log("warn", `subscribe to ${this.channel} refused: ${error.code}: ${error.message}`);
    this.end();
  }
  end() {
    this.state = "unsubscribed";
    this.generation++;
    this.held = null;
    this.host.forget(this);
  }
};
function toMessage(frame) {
  return { channel: frame.channel, data: frame.data, offset: frame.offset, epoch: frame.epoch };
}

// src/transports/transport.ts
function doorUrl(ctx, path, params = {}) {
  const url = new URL(ctx.baseUrl + path);
  const token = ctx.token();
  if (token) url.searchParams.set("token", token);
  for (const [k, v] of Object.entries(params)) {
    for (const value of v === void 0 ? [] : Array.isArray(v) ? v : [v]) url.searchParams.append(k, value);
  }
  return url.toString();
}
function parseFrame(text, log) {
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object" && typeof value.type === "string") {
      return value;
    }
  } catch {
  }
  log("warn", "ignoring a frame that is not a JSON object with a type", text.slice(0, 200));
  return null;
}

// src/transports/websocket.ts
var CLOSE_CODES = {
  1001: "unavailable",
  1002: "bad_request",
  4001: "token_expired",
  4003: "unauthorized",
  4004: "forbidden",
  4005: "unavailable",
  4008: "slow_consumer",
  4009: "unavailable"
};
function socketUrl(ctx) {
  return doorUrl(ctx, "/ws").replace(/^http/, "ws");
}
function webSocketClass(ctx) {
  return ctx.WebSocket ?? globalThis.WebSocket;
}
var websocket = {
  unavailable(ctx) {
    return webSocketClass(ctx) ? null : "no WebSocket here: pass one as the `WebSocket` option (such as the `ws` package's)";
  },
  open(ctx, events) {
    const WS = webSocketClass(ctx);
    const ws = new WS(socketUrl(ctx));
    let over = false;
    const finish = (code, message) => {
      if (over) return;
      over = true;
      events.closed({ code, message });
    };
    ws.onmessage = (event) => {
      if (over) return;
      events.activity();
      const data = event.data;
      const text = typeof data === "string" ? data : new TextDecoder().decode(data);
      const frame = parseFrame(text, ctx.log);
      if (frame) events.frame(frame);
    };
    ws.onclose = (event) => {
      const code = CLOSE_CODES[event.code] ?? "transport";
      finish(code, `WebSocket closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    };
    ws.onerror = () => {
    };
    return {
      name: "websocket",
      send(commands) {
        if (over || ws.readyState !== 1) return;
        for (const command of commands) ws.send(JSON.stringify(command));
      },
      close() {
        over = true;
        ws.onmessage = ws.onclose = null;
        try {
          ws.close(1e3);
        } catch {
        }
      }
    };
  }
};

// src/transports/session.ts
var MAX_BATCH = 100;
var SessionSender = class {
  constructor(ctx, events, fail, deliver = (reply) => events.frame(reply)) {
    this.ctx = ctx;
    this.events = events;
    this.fail = fail;
    this.deliver = deliver;
    this.session = null;
    this.queue = [];
    this.busy = false;
    this.over = false;
    this.abort = new AbortController();
  }
  /** The session of the `connected` frame: commands wait for it. */
  start(session) {
    this.session = session;
    void this.pump();
  }
  send(commands) {
    this.queue.push(...commands);
    void this.pump();
  }
  stop(farewell = []) {
    this.over = true;
    this.abort.abort();
    if (this.session && farewell.length) {
      this.ctx.fetch(this.url(), { method: "POST", body: JSON.stringify(farewell.slice(0, MAX_BATCH)), headers: PLAIN, keepalive: true }).catch(() => {
      });
    }
  }
  url() {
    return `${this.ctx.baseUrl}/session/${encodeURIComponent(this.session)}`;
  }
  async pump() {
    while (!this.busy && !this.over && this.session && this.queue.length) {
      const batch = this.queue.splice(0, MAX_BATCH);
      this.busy = true;
      let replies;
      try {
        const res = await this.ctx.fetch(this.url(), {
          method: "POST",
          body: JSON.stringify(batch),
          headers: PLAIN,
          signal: this.abort.signal
        });
        if (!res.ok) {
          this.fail(await httpFailure(res, "POST /session"));
          return;
        }
        replies = await res.json();
      } catch (e) {
        if (!this.over) this.fail({ code: "transport", message: `POST /session failed: ${e.message}` });
        return;
      } finally {
        this.busy = false;
      }
      if (this.over) return;
      if (!Array.isArray(replies)) {
        this.fail({ code: "transport", message: "POST /session did not answer an array" });
        return;
      }
      this.events.activity();
      batch.forEach((command, i) => {
        const reply = replies[i] ?? { type: "reply", id: command.id };
        this.deliver(reply);
      });
    }
  }
};
var PLAIN = { "content-type": "text/plain;charset=UTF-8" };
async function httpFailure(res, what) {
  let code = "transport";
  let message = `${what} answered HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body?.error && typeof body.error.code === "string") {
      code = body.error.code;
      message += `: ${String(body.error.message ?? code)}`;
    }
  } catch {
  }
  return { code, message };
}

// src/transports/streaming.ts
var LineSplitter = class {
  constructor() {
    this.tail = "";
    this.lastWasCr = false;
  }
  push(chunk, onLine) {
    let text = chunk;
    if (this.lastWasCr && text.startsWith("\n")) text = text.slice(1);
    this.lastWasCr = false;
    const parts = (this.tail + text).split(/\r\n|\n|\r/);
    this.tail = parts.pop() ?? "";
    if (text.endsWith("\r")) this.lastWasCr = true;
    for (const line of parts) onLine(line);
  }
};
var SseParser = class {
  constructor() {
    this.lines = new LineSplitter();
    this.data = [];
  }
  push(chunk, onData) {
    this.lines.push(chunk, (line) => {
      if (line === "") {
        if (this.data.length) onData(this.data.join("\n"));
        this.data = [];
        return;
      }
      if (line.startsWith(":")) return;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
    });
  }
};
function streamingFactory(name, path, accept) {
  return {
    unavailable(ctx) {
      return typeof ctx.fetch === "function" ? null : "no fetch() here";
    },
    open(ctx, events) {
      const abort = new AbortController();
      let over = false;
      const finish = (why) => {
        if (over) return;
        over = true;
        abort.abort();
        sender.stop();
        events.closed(why);
      };
      const sender = new SessionSender(ctx, events, finish);
      const onFrame = (frame) => {
        if (over) return;
        if (frame.type === "connected" && typeof frame.session === "string") sender.start(frame.session);
        events.frame(frame);
      };
      void (async () => {
        try {
          const res = await ctx.fetch(doorUrl(ctx, path), { headers: { accept }, signal: abort.signal, cache: "no-store" });
          if (!res.ok || !res.body) {
            finish(res.ok ? { code: "transport", message: "no response body" } : await httpFailure(res, `GET ${path}`));
            return;
          }
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          const sse2 = new SseParser();
          const ndjson = new LineSplitter();
          for (; ; ) {
            const { value, done } = await reader.read();
            if (done || over) break;
            events.activity();
            const text = decoder.decode(value, { stream: true });
            if (name === "sse") {
              sse2.push(text, (data) => {
                const frame = parseFrame(data, ctx.log);
                if (frame) onFrame(frame);
              });
            } else {
              ndjson.push(text, (line) => {
                if (!line.trim()) return;
                const frame = parseFrame(line, ctx.log);
                if (frame) onFrame(frame);
              });
            }
          }
          finish({ code: "transport", message: `GET ${path}: the stream ended` });
        } catch (e) {
          finish({ code: "transport", message: `GET ${path} failed: ${e.message}` });
        }
      })();
      return {
        name,
        send(commands) {
          if (!over) sender.send(commands);
        },
        close() {
          over = true;
          abort.abort();
          sender.stop();
        }
      };
    }
  };
}
var sse = streamingFactory("sse", "/sse", "text/event-stream");
var httpStream = streamingFactory("http-stream", "/stream", "application/x-ndjson");

// src/transports/long-poll.ts
var SESSION_SILENCE_MS = 45e3;
var POLL_GRACE_MS = 1e4;
var INTERNAL_IDS = 2 ** 40;
var longPoll = {
  unavailable(ctx) {
    return typeof ctx.fetch === "function" ? null : "no fetch() here";
  },
  open(ctx, events) {
    let over = false;
    const inFlight = /* @__PURE__ */ new Set();
    let session;
    let emptyCursor = "";
    let channels = [];
    let generation = 0;
    let relisting = false;
    let relistAgain = false;
    let lastAnswer = Date.now();
    const waiting = /* @__PURE__ */ new Map();
    const positions = /* @__PURE__ */ new Map();
    const internal = /* @__PURE__ */ new Map();
    let nextInternal = INTERNAL_IDS;
    const finish = (why) => {
      if (over) return;
      over = true;
      for (const poll of inFlight) poll.abort();
      sender.stop();
      events.closed(why);
    };
    const sender = new SessionSender(ctx, events, finish, (reply) => {
      const id = reply.id;
      const mine = id !== void 0 ? internal.get(id) : void 0;
      if (!mine) return events.frame(reply);
      internal.delete(id);
      mine(reply);
    });
    const ask = (command) => new Promise((resolve) => {
      const id = ++nextInternal;
      internal.set(id, resolve);
      sender.send([{ ...command, id }]);
    });
    const emit = (message) => {
      positions.set(message.channel, { offset: message.offset, epoch: message.epoch });
      events.frame(message);
    };
    async function subscribe(command) {
      const answer = await ask({ type: "subscribe", channel: command.channel });
      if (over) return;
      if (answer.type === "error") {
        events.frame({ ...answer, id: command.id });
        return;
      }
      waiting.set(command.channel, command);
      if (!channels.includes(command.channel)) channels = [...channels, command.channel];
      void relist();
    }
    async function get(params) {
      if (session && Date.now() - lastAnswer > SESSION_SILENCE_MS) {
        finish({ code: "transport", message: "no poll answered for too long: the session may have expired" });
        return null;
      }
      const poll = new AbortController();
      inFlight.add(poll);
      const timer = setTimeout(() => poll.abort(), ctx.pollTimeout * 1e3 + POLL_GRACE_MS);
      try {
        const res = await ctx.fetch(doorUrl(ctx, "/poll", params), { signal: poll.signal, cache: "no-store" });
        if (!res.ok) {
          finish(await httpFailure(res, "GET /poll"));
          return null;
        }
        const answer = await res.json();
        if (!Array.isArray(answer.messages) || typeof answer.cursor !== "string") {
          finish({ code: "transport", message: "GET /poll answered something else than {messages, cursor}" });
          return null;
        }
        if (over) return null;
        lastAnswer = Date.now();
        events.activity();
        return answer;
      } catch (e) {
        finish({ code: "transport", message: `GET /poll failed: ${e.message}` });
        return null;
      } finally {
        clearTimeout(timer);
        inFlight.delete(poll);
      }
    }
    function take(frames, { first = false, relisting: relisting2 = false, held = [] } = {}) {
      for (const frame of frames) {
        if (over || !frame || typeof frame !== "object") continue;
        switch (frame.type) {
          case "connected":
            if (first && typeof frame.session === "string") {
              session = frame.session;
              sender.start(session);
              events.frame(frame);
            }
            break;
          case "message":
            if (typeof frame.cursor !== "string" || !channels.includes(frame.channel)) break;
            if (relisting2) held.push(frame);
            else emit(frame);
            break;
          case "subscribed":
            if (!relisting2) ctx.log("warn", `${frame.channel}: history no longer held every missed message`);
            break;
          case "disconnect":
            events.frame(frame);
            finish({ code: frame.code, message: frame.message ?? "the server ended the session" });
            return false;
          default:
            events.frame(frame);
        }
      }
      return true;
    }
    async function catchUp(starts) {
      for (const [channel, start] of starts) {
        const command = waiting.get(channel);
        const from = command ? command.since : positions.get(channel);
        let missed = [];
        let recovered = true;
        if (from && from.offset !== 0 && from.epoch !== start.epoch) {
          recovered = false;
        } else if (from && from.offset < start.offset) {
          const want = start.offset - from.offset;
          const answer = await ask({ type: "history", channel, since: from, limit: want });
          if (over) return;
          missed = answer.type === "reply" && Array.isArray(answer.messages) ? answer.messages : [];
          recovered = missed.length === want && missed[0]?.offset === from.offset + 1;
        }
        if (command) {
          waiting.delete(channel);
          events.frame({
            type: "reply",
            id: command.id,
            channel,
            offset: start.offset,
            epoch: start.epoch,
            ...command.since ? { recovered } : {}
          });
        } else if (!recovered) {
          ctx.log("warn", `${channel}: history no longer held every missed message`);
        }
        for (const message of missed) emit(message);
        const last = positions.get(channel);
        if (!last || last.epoch !== start.epoch || last.offset < start.offset) {
          positions.set(channel, { offset: start.offset, epoch: start.epoch });
        }
      }
    }
    async function pollLoop(mine, list, cursor) {
      while (!over && mine === generation) {
        const answer = await get({ channel: list, cursor, session, timeout: String(ctx.pollTimeout) });
        if (!answer) return;
        if (!take(answer.messages)) return;
        cursor = answer.cursor;
      }
    }
    async function relist() {
      if (relisting) {
        relistAgain = true;
        return;
      }
      relisting = true;
      do {
        relistAgain = false;
        const list = channels.slice();
        let cursor = emptyCursor;
        const held = [];
        if (list.length) {
          const answer = await get({ channel: list, session });
          if (!answer) return;
          const starts = /* @__PURE__ */ new Map();
          for (const frame of answer.messages) if (frame?.type === "subscribed") starts.set(frame.channel, frame);
          if (!take(answer.messages, { relisting: true, held })) return;
          cursor = answer.cursor;
          await catchUp(starts);
          if (over) return;
          for (const message of held) emit(message);
        }
        void pollLoop(++generation, list, cursor);
      } while (relistAgain && !over);
      relisting = false;
    }
    void (async () => {
      const first = await get({});
      if (!first) return;
      emptyCursor = first.cursor;
      if (!take(first.messages, { first: true })) return;
      if (!session) {
        finish({ code: "transport", message: "the first poll did not open a session" });
        return;
      }
      if (generation === 0) void pollLoop(++generation, [], emptyCursor);
    })();
    return {
      name: "long-poll",
      send(commands) {
        if (over) return;
        for (const command of commands) {
          if (command.type === "subscribe") {
            void subscribe(command);
          } else if (command.type === "unsubscribe") {
            waiting.delete(command.channel);
            positions.delete(command.channel);
            if (channels.includes(command.channel)) {
              channels = channels.filter((c) => c !== command.channel);
              void relist();
            }
            sender.send([command]);
          } else {
            sender.send([command]);
          }
        }
      },
      close(farewell) {
        over = true;
        for (const poll of inFlight) poll.abort();
        sender.stop(farewell);
      }
    };
  }
};

// src/client.ts
var DEFAULT_TRANSPORTS = ["websocket", "sse", "http-stream", "long-poll"];
var FACTORIES = {
  websocket,
  sse,
  "http-stream": httpStream,
  "long-poll": longPoll
};
var Switchboard = class extends Emitter {
  constructor(url, options = {}) {
    super();
    this.subs = /* @__PURE__ */ new Map();
    this.roomMap = /* @__PURE__ */ new Map();
    this.options = options;
    this.log = makeLogger(options);
    this.clock = options.clock ?? realClock;
    const transports = options.transports ?? DEFAULT_TRANSPORTS;
    for (const name of transports) {
      if (!(name in FACTORIES)) throw new SwitchboardError("bad_request", `unknown transport "${name}" (known: ${DEFAULT_TRANSPORTS.join(", ")})`);
    }
    if (!transports.length) throw new SwitchboardError("bad_request", "no transports to try");
    const fetchImpl = options.fetch ?? (typeof fetch === "function" ? fetch.bind(globalThis) : void 0);
    this.connection = new Connection({
      baseUrl: baseUrl(url),
      token: options.token,
      getToken: options.getToken,
      transports,
      factories: { ...FACTORIES, ...options.transportFactories },
      minReconnectDelay: options.minReconnectDelay ?? 250,
      maxReconnectDelay: options.maxReconnectDelay ?? 1e4,
      timeout: options.timeout ?? 1e4,
      WebSocket: options.WebSocket,
      fetch: fetchImpl,
      log: this.log,
      clock: this.clock
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
      ...[...this.subs.keys()].map((channel) => ({ type: "unsubscribe", channel })),
      ...[...this.roomMap.keys()].map((room) => ({ type: "leave_room", room }))
    ];
  }
  onListenerError(event, error) {
    this.log("error", `a "${String(event)}" listener threw`, error);
  }
  /** "connecting", "connected" or "disconnected". */
  get state() {
    return this.connection.state;
  }
  /** The transport in use while connected ("websocket", "sse", "http-stream", "long-poll"). */
  get transport() {
    return this.connection.transportName;
  }
  /** The subscriptions, by channel. */
  get subscriptions() {
    return this.subs;
  }
  /** The rooms joined (or being joined), by name. */
  get rooms() {
    return this.roomMap;
  }
  /** Connects (and stays connected, reconnecting as needed). Resolves once connected. */
  connect() {
    const connected = new Promise((resolve, reject) => {
      if (this.state === "connected") return resolve();
      const onState = (state) => {
        if (state === "connected") {
          this.connection.off("state", onState);
          this.off("disconnected", onStop);
          resolve();
        }
      };
      const onStop = (info) => {
        this.connection.off("state", onState);
        this.off("disconnected", onStop);
        reject(new SwitchboardError(info.code, info.message));
      };
      this.connection.on("state", onState);
      this.on("disconnected", onStop);
    });
    connected.catch(() => {
    });
    this.connection.connect();
    return connected;
  }
  /** Disconnects and stays disconnected until `connect()`. Subscriptions and rooms are kept. */
  disconnect() {
    this.connection.disconnect();
  }
  /** Subscribes to `channel` (or answers its existing subscription). */
  subscribe(channel, options = {}) {
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
        setTimer: (fn, ms) => this.clock.setTimeout(fn, ms)
      },
      channel,
      options.since
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
  async publish(channel, data) {
    const reply = await this.connection.request({ type: "publish", channel, data, idempotency_key: randomKey() });
    return { offset: reply.offset, epoch: reply.epoch };
  }
  /** Joins `room`; resolves with the room once joined. It is joined again after reconnects. */
  joinRoom(name, options = {}) {
    if (this.roomMap.has(name)) {
      return Promise.reject(new SwitchboardError("bad_request", `already in room \`${name}\``));
    }
    return new Promise((resolve, reject) => {
      const room = new Room(
        {
          connection: this.connection,
          forget: (r) => {
            if (this.roomMap.get(r.name) === r) this.roomMap.delete(r.name);
          },
          log: this.log,
          retryDelay: (n) => this.retryDelay(n),
          setTimer: (fn, ms) => this.clock.setTimeout(fn, ms)
        },
        name,
        options.meta,
        { resolve, reject }
      );
      this.roomMap.set(name, room);
      const timeout = this.options.timeout ?? 1e4;
      this.clock.setTimeout(() => room.abandon(new SwitchboardError("timeout", `could not join room ${name} within ${timeout} ms`)), timeout);
      if (this.connection.state === "connected") void room.join();
    });
  }
  // ---- inside --------------------------------------------------------------------------------
  /** A new connection: every subscription and room again, from where it was. */
  renew() {
    for (const sub of this.subs.values()) void sub.subscribe();
    for (const room of this.roomMap.values()) void room.join();
  }
  interrupted() {
    for (const sub of this.subs.values()) sub.interrupted();
    for (const room of this.roomMap.values()) room.interrupted();
  }
  route(frame) {
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
  retryDelay(attempt) {
    return backoffDelay(attempt, this.options.minReconnectDelay ?? 250, this.options.maxReconnectDelay ?? 1e4);
  }
};
function baseUrl(url) {
  const parsed = new URL(url, typeof location === "object" ? location.href : void 0);
  const scheme = parsed.protocol.replace(/^ws/, "http");
  if (scheme !== "http:" && scheme !== "https:") {
    throw new SwitchboardError("bad_request", `the server URL must be http(s):// or ws(s)://, not ${parsed.protocol}`);
  }
  return `${scheme}//${parsed.host}${parsed.pathname.replace(/\/+$/, "")}`;
}
function makeLogger(options) {
  const { debug, logger } = options;
  const toConsole = (level, message, details) => {
    const line = `[switchboard] ${message}`;
    const args = details === void 0 ? [line] : [line, details];
    if (level === "error") console.error(...args);
    else if (level === "warn") console.warn(...args);
    else console.debug(...args);
  };
  return (level, message, details) => {
    if (logger) {
      try {
        logger(level, message, details);
      } catch {
      }
    }
    if (debug) toConsole(level, message, details);
  };
}
function randomKey() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
export {
  Call,
  DEFAULT_TRANSPORTS,
  Room,
  Subscription,
  Switchboard,
  SwitchboardError
};
