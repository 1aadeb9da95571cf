// One channel subscription: its position, what it has delivered, and its (re)subscribes.
//
// The rule that gives "each message exactly once, in offset order": the subscription keeps
// the position of the last message it delivered (or where it started), subscribes again from
// there after every reconnect (`since`), and delivers a message only if it comes after that
// position. While a subscribe is waiting for its reply, the channel's frames are held back:
// on the one-way doors the reply comes back through `POST /session` while the recovered
// messages arrive on the stream, so they can overtake it.

import { Emitter } from "./emitter.js";
import { isTransient, SwitchboardError, toSwitchboardError } from "./errors.js";
import type {
  ErrorInfo,
  HistoryResult,
  JoinFrame,
  LeaveFrame,
  Logger,
  Member,
  Message,
  MessageFrame,
  Position,
  PublishResult,
  SubscribedInfo,
  SubscribeReply,
} from "./types.js";
import type { Connection } from "./connection.js";

export interface SubscriptionEvents {
  message: Message;
  subscribed: SubscribedInfo;
  join: Member;
  leave: Member;
  error: ErrorInfo;
  /** The server ended the subscription (`POST /api/unsubscribe`): it is not renewed. */
  unsubscribed: { reason?: string };
}

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

/** What a subscription needs from the client. */
export interface SubscriptionHost {
  connection: Connection;
  publish(channel: string, data: unknown): Promise<PublishResult>;
  /** The subscription ended for good: forget it. */
  forget(sub: Subscription): void;
  log: Logger;
  /** Delay before retrying a subscribe the server refused for a passing reason. */
  retryDelay(attempt: number): number;
  setTimer(fn: () => void, ms: number): unknown;
}

type ChannelFrame = MessageFrame | JoinFrame | LeaveFrame;

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  state: SubscriptionState = "subscribing";
  /** The position of the last message delivered (or where the subscription started). */
  position: Position | null;

  /** Bumped by each subscribe, so a late reply of an earlier one is ignored. */
  private generation = 0;
  private held: ChannelFrame[] | null = null;
  private failures = 0;

  constructor(
    private readonly host: SubscriptionHost,
    channel: string,
    since?: Position,
  ) {
    super();
    this.channel = channel;
    this.position = since ? { offset: since.offset, epoch: since.epoch } : null;
  }

  protected override onListenerError(event: PropertyKey, error: unknown): void {
    this.host.log("error", `a "${String(event)}" listener of ${this.channel} threw`, error);
  }

  // ---- the application's calls ---------------------------------------------------------------

  publish(data: unknown): Promise<PublishResult> {
    return this.host.publish(this.channel, data);
  }

  async presence(): Promise<Member[]> {
    const reply = await this.host.connection.request({ type: "presence", channel: this.channel });
    return (reply.members as Member[]) ?? [];
  }

  async history(options: { limit?: number; since?: Position } = {}): Promise<HistoryResult> {
    const reply = await this.host.connection.request({ type: "history", channel: this.channel, ...options });
    const frames = (reply.messages as MessageFrame[]) ?? [];
    return {
      messages: frames.map(toMessage),
      offset: reply.offset as number,
      epoch: reply.epoch as string,
    };
  }

  unsubscribe(): void {
    if (this.state === "unsubscribed") return;
    this.end();
    if (this.host.connection.state === "connected") {
      this.host.connection.request({ type: "unsubscribe", channel: this.channel }, { bound: true }).catch(() => {});
    }
  }

  // ---- driven by the client ------------------------------------------------------------------

  /** Subscribes on the current connection, from the last delivered position. */
  async subscribe(): Promise<void> {
    if (this.state === "unsubscribed") return;
    const generation = ++this.generation;
    this.state = "subscribing";
    this.held = [];
    const since = this.position ?? undefined;
    let reply: SubscribeReply;
    try {
      reply = (await this.host.connection.request(
        { type: "subscribe", channel: this.channel, ...(since ? { since } : {}) },
        { bound: true },
      )) as unknown as SubscribeReply;
    } catch (e) {
      if (generation === this.generation) this.refused(toSwitchboardError(e));
      return;
    }
    if (generation !== this.generation) return; // unsubscribed, or a newer subscribe is under way
    this.failures = 0;
    // Messages after the reply come after `since` when the epoch is the one we resume (the
    // server recovers the rest), or after the reply's offset otherwise: a new stream or a
    // first subscribe gets nothing older than where it starts.
    // Offset 0 had seen nothing, so it continues any epoch.
    if (!since || (since.offset !== 0 && since.epoch !== reply.epoch)) {
      this.position = { offset: reply.offset, epoch: reply.epoch };
    }
    this.state = "subscribed";
    const held = this.held ?? [];
    this.held = null;
    this.emit("subscribed", {
      offset: reply.offset,
      epoch: reply.epoch,
      recovered: since ? reply.recovered === true : false,
    });
    for (const frame of held) this.handle(frame);
  }

  /** The connection dropped: the next `subscribe()` resumes from `position`. */
  interrupted(): void {
    if (this.state === "unsubscribed") return;
    this.generation++;
    this.state = "subscribing";
    this.held = null;
  }

  /** A frame of this channel. */
  handle(frame: ChannelFrame): void {
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
  serverUnsubscribed(reason?: string): void {
    if (this.state === "unsubscribed") return;
    this.end();
    this.emit("unsubscribed", { reason });
  }

  private deliver(frame: MessageFrame): void {
    const last = this.position;
    if (last && frame.epoch === last.epoch && frame.offset <= last.offset) {
      this.host.log("debug", `${this.channel}: skipping offset ${frame.offset}, already delivered up to ${last.offset}`);
      return;
    }
    // A new epoch means the channel's stream was reset: its offsets start again.
    this.position = { offset: frame.offset, epoch: frame.epoch };
    this.emit("message", toMessage(frame));
  }

  private refused(error: SwitchboardError): void {
    if (error.code === "disconnected") return; // the next connection subscribes again
    if (error.code === "bad_request" && /already subscribed/.test(error.message)) {
      // A request the network repeated (a browser re-sends a POST when a reused connection
      // fails): start over from our own position.
      this.host.connection.request({ type: "unsubscribe", channel: this.channel }, { bound: true }).then(
        () => this.subscribe(),
        () => {},
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

  private end(): void {
    this.state = "unsubscribed";
    this.generation++;
    this.held = null;
    this.host.forget(this);
  }
}

function toMessage(frame: MessageFrame): Message {
  return { channel: frame.channel, data: frame.data, offset: frame.offset, epoch: frame.epoch };
}
