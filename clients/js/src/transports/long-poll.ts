// Long polling (`GET /poll`): one request at a time, each answered with the frames that
// arrived (or none after its wait). The first poll opens a session (its `connected` frame);
// every later one names it (`&session=`) and passes the cursor of the previous answer, since a
// poll without a cursor would open a new session. Commands go through the session.
//
// A poll whose answer is lost took the session's frames with it, and the server cannot send
// them again on that session: so any failed poll ends the transport, and the connection comes
// back on a new session with `since`, which recovers them from history.

import type { ClientCommand, ServerFrame } from "../types.js";
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

export const longPoll: TransportFactory = {
  unavailable(ctx) {
    return typeof ctx.fetch === "function" ? null : "no fetch() here";
  },

  open(ctx: TransportContext, events: TransportEvents): Transport {
    let over = false;
    let current: AbortController | null = null;
    const finish = (why: TransportClosed) => {
      if (over) return;
      over = true;
      current?.abort();
      sender.stop();
      events.closed(why);
    };
    const sender = new SessionSender(ctx, events, finish);

    void (async () => {
      let cursor: string | undefined;
      let session: string | undefined;
      let lastAnswer = Date.now();
      while (!over) {
        // A poll that names an unknown session is answered like any other (empty), so a
        // session that may have expired while this page was asleep is not trusted.
        if (session && Date.now() - lastAnswer > SESSION_SILENCE_MS) {
          finish({ code: "transport", message: "no poll for too long: the session may have expired" });
          return;
        }
        const timeout = cursor === undefined ? undefined : String(ctx.pollTimeout);
        const url = doorUrl(ctx, "/poll", { cursor, session, timeout });
        current = new AbortController();
        const timer = setTimeout(() => current?.abort(), ctx.pollTimeout * 1000 + POLL_GRACE_MS);
        let answer: { messages?: unknown; cursor?: unknown };
        try {
          const res = await ctx.fetch(url, { signal: current.signal, cache: "no-store" });
          if (!res.ok) {
            finish(await httpFailure(res, "GET /poll"));
            return;
          }
          answer = (await res.json()) as typeof answer;
        } catch (e) {
          finish({ code: "transport", message: `GET /poll failed: ${(e as Error).message}` });
          return;
        } finally {
          clearTimeout(timer);
        }
        if (over) return;
        if (!Array.isArray(answer.messages) || typeof answer.cursor !== "string") {
          finish({ code: "transport", message: "GET /poll answered something else than {messages, cursor}" });
          return;
        }
        lastAnswer = Date.now();
        events.activity();
        cursor = answer.cursor;
        let ended = false;
        for (const frame of answer.messages as ServerFrame[]) {
          if (over || !frame || typeof frame !== "object") continue;
          if (frame.type === "connected" && typeof frame.session === "string") {
            session = frame.session;
            sender.start(session);
          }
          if (frame.type === "disconnect") ended = true;
          events.frame(frame);
        }
        if (ended) {
          finish({ code: "transport", message: "the server ended the session" });
          return;
        }
      }
    })();

    return {
      name: "long-poll",
      send(commands: ClientCommand[]) {
        if (!over) sender.send(commands);
      },
      close(farewell?: ClientCommand[]) {
        over = true;
        current?.abort();
        // The session would stay (in presence and rooms) until it expires: leave at once.
        sender.stop(farewell);
      },
    };
  },
};
