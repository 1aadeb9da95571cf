// Long polling (`GET /poll`), one request at a time.
//
// Why it is not "a stream in slices" like the other one-way doors: a session's frames are
// handed to whichever poll answers, and when that answer is lost on the way (a proxy cuts the
// connection, and the browser silently sends the GET again on a new one) they are gone. The
// channels' messages therefore come the way the door makes safe: the channels are named in
// the poll's URL and each poll passes the cursor of the previous answer, so a lost or
// repeated answer is simply asked again. The session is used for the rest: commands, room
// events, and a plain subscribe per channel so the client shows in presence and gets
// join/leave (the session's own copies of the messages are dropped: the URL's carry cursors).
//
// A cursor is made for one channel list, and a poll without a cursor opens a session, so when
// the list changes a first poll for the new list gives positions and a cursor (and a session
// of its own, left to expire unused), and the messages each channel missed up to there are
// fetched with `history` through the session. The client's `subscribe` is answered here, with
// `recovered` telling whether history held all of them.

import type { ClientCommand, CommandBody, ErrorFrame, MessageFrame, Position, ServerFrame, SubscribeCommand, SubscribedFrame } from "../types.js";
import { httpFailure, SessionSender } from "./session.js";
import {
  doorUrl,
  type Transport,
  type TransportClosed,
  type TransportContext,
  type TransportEvents,
  type TransportFactory,
} from "./transport.js";

/** A session the server has not heard from for this long may be gone (it keeps one 60 s). */
const SESSION_SILENCE_MS = 45_000;
/** How much longer than its `timeout` a poll may take before it counts as lost. */
const POLL_GRACE_MS = 10_000;
/** Ids of the transport's own commands, far above the connection's. */
const INTERNAL_IDS = 2 ** 40;

interface PollAnswer {
  messages: ServerFrame[];
  cursor: string;
}

export const longPoll: TransportFactory = {
  unavailable(ctx) {
    return typeof ctx.fetch === "function" ? null : "no fetch() here";
  },

  open(ctx: TransportContext, events: TransportEvents): Transport {
    let over = false;
    /** Polls in flight. One is never aborted to make way for another: the server may have
     * handed it session frames already, which would be lost. */
    const inFlight = new Set<AbortController>();
    let session: string | undefined;
    let emptyCursor = "";
    /** The URL channels wanted now. */
    let channels: string[] = [];
    /** Each new channel list starts a new sequence of polls; older ones end after their poll. */
    let generation = 0;
    let relisting = false;
    let relistAgain = false;
    let lastAnswer = Date.now();
    /** The client's subscribes waiting for their answer, by channel. */
    const waiting = new Map<string, SubscribeCommand>();
    /** The last position handed to the client, per URL channel. */
    const positions = new Map<string, Position>();
    const internal = new Map<number, (frame: ServerFrame) => void>();
    let nextInternal = INTERNAL_IDS;

    const finish = (why: TransportClosed) => {
      if (over) return;
      over = true;
      for (const poll of inFlight) poll.abort();
      sender.stop();
      events.closed(why);
    };
    const sender = new SessionSender(ctx, events, finish, (reply) => {
      const id = (reply as { id?: number }).id;
      const mine = id !== undefined ? internal.get(id) : undefined;
      if (!mine) return events.frame(reply);
      internal.delete(id!);
      mine(reply);
    });
    /** Runs one command of our own through the session and answers its reply. */
    const ask = (command: CommandBody) =>
      new Promise<ServerFrame>((resolve) => {
        const id = ++nextInternal;
        internal.set(id, resolve);
        sender.send([{ ...command, id } as ClientCommand]);
      });

    const emit = (message: MessageFrame) => {
      positions.set(message.channel, { offset: message.offset, epoch: message.epoch });
      events.frame(message);
    };

    async function subscribe(command: SubscribeCommand): Promise<void> {
      // The session's own subscription: presence, join/leave, and the permission check.
      const answer = await ask({ type: "subscribe", channel: command.channel });
      if (over) return;
      if (answer.type === "error") {
        events.frame({ ...(answer as ErrorFrame), id: command.id });
        return;
      }
      waiting.set(command.channel, command);
      if (!channels.includes(command.channel)) channels = [...channels, command.channel];
      void relist();
    }

    /** One GET /poll; `null` when the transport ended. */
    async function get(params: Record<string, string | string[] | undefined>): Promise<PollAnswer | null> {
      // A page that slept past the session's life would poll a session the server forgot,
      // and a poll naming an unknown session is answered like any other (empty).
      if (session && Date.now() - lastAnswer > SESSION_SILENCE_MS) {
        finish({ code: "transport", message: "no poll answered for too long: the session may have expired" });
        return null;
      }
      const poll = new AbortController();
      inFlight.add(poll);
      const timer = setTimeout(() => poll.abort(), ctx.pollTimeout * 1000 + POLL_GRACE_MS);
      try {
        const res = await ctx.fetch(doorUrl(ctx, "/poll", params), { signal: poll.signal, cache: "no-store" });
        if (!res.ok) {
          finish(await httpFailure(res, "GET /poll"));
          return null;
        }
        const answer = (await res.json()) as Partial<PollAnswer>;
        if (!Array.isArray(answer.messages) || typeof answer.cursor !== "string") {
          finish({ code: "transport", message: "GET /poll answered something else than {messages, cursor}" });
          return null;
        }
        if (over) return null;
        lastAnswer = Date.now();
        events.activity();
        return answer as PollAnswer;
      } catch (e) {
        finish({ code: "transport", message: `GET /poll failed: ${(e as Error).message}` });
        return null;
      } finally {
        clearTimeout(timer);
        inFlight.delete(poll);
      }
    }

    /**
     * Hands an answer's frames on; false when the session ended. `held` (a relisting poll)
     * keeps the URL's messages back: they come after what catching up fetches.
     */
    function take(frames: ServerFrame[], { first = false, relisting = false, held = [] as MessageFrame[] } = {}): boolean {
      for (const frame of frames) {
        if (over || !frame || typeof frame !== "object") continue;
        switch (frame.type) {
          case "connected":
            // The first poll's session is ours; a relisting poll's is left to expire.
            if (first && typeof frame.session === "string") {
              session = frame.session;
              sender.start(session);
              events.frame(frame);
            }
            break;
          case "message":
            // Only the URL's copy (with a cursor) counts: it comes in cursor order.
            if (typeof frame.cursor !== "string" || !channels.includes(frame.channel)) break;
            if (relisting) held.push(frame);
            else emit(frame);
            break;
          case "subscribed":
            if (!relisting) ctx.log("warn", `${frame.channel}: history no longer held every missed message`);
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

    /**
     * After a relisting poll: each channel's missed messages up to where the new cursor starts,
     * from history, and the answers of the subscribes that waited for it.
     */
    async function catchUp(starts: Map<string, SubscribedFrame>): Promise<void> {
      for (const [channel, start] of starts) {
        const command = waiting.get(channel);
        const from = command ? command.since : positions.get(channel);
        let missed: MessageFrame[] = [];
        let recovered = true;
        // Offset 0 had seen nothing, so it continues any epoch.
        if (from && from.offset !== 0 && from.epoch !== start.epoch) {
          recovered = false;
        } else if (from && from.offset < start.offset) {
          const want = start.offset - from.offset;
          const answer = await ask({ type: "history", channel, since: from, limit: want });
          if (over) return;
          missed = answer.type === "reply" && Array.isArray(answer.messages) ? (answer.messages as MessageFrame[]) : [];
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
            ...(command.since ? { recovered } : {}),
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

    /** Polls one channel list from `cursor` until a newer list takes over. */
    async function pollLoop(mine: number, list: string[], cursor: string): Promise<void> {
      while (!over && mine === generation) {
        const answer = await get({ channel: list, cursor, session, timeout: String(ctx.pollTimeout) });
        if (!answer) return;
        // Taken even when a newer list took over meanwhile: its session frames count, and its
        // messages run on from what this sequence gave (older ones are skipped by position).
        if (!take(answer.messages)) return;
        cursor = answer.cursor;
      }
    }

    /** The channel list changed: a first poll for the new list, catching up, a new sequence. */
    async function relist(): Promise<void> {
      if (relisting) {
        relistAgain = true;
        return;
      }
      relisting = true;
      do {
        relistAgain = false;
        const list = channels.slice();
        let cursor = emptyCursor;
        const held: MessageFrame[] = [];
        if (list.length) {
          const answer = await get({ channel: list, session });
          if (!answer) return;
          const starts = new Map<string, SubscribedFrame>();
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
      // The first poll opens the session (no channels: each is subscribed through it first).
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
      send(commands: ClientCommand[]) {
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
      close(farewell?: ClientCommand[]) {
        over = true;
        for (const poll of inFlight) poll.abort();
        // The session would stay (in presence and rooms) until it expires: leave at once.
        sender.stop(farewell);
      },
    };
  },
};
