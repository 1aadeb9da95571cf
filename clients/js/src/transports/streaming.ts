// Server-Sent Events (`GET /sse`) and HTTP streaming of NDJSON (`GET /stream`): one long
// response carrying every frame, and commands through the session (session.ts).
//
// Both are read with fetch() rather than EventSource: fetch shows the HTTP status and error
// body (so a `token_expired` refusal is seen), lets the connection decide when and how to
// reconnect, and exists in Node 20, which has no EventSource. The stream is opened without
// channels in its URL: subscriptions go through the session with `since`, exactly as on a
// WebSocket, so every transport resumes the same way.

import type { ClientCommand, ServerFrame } from "../types.js";
import { httpFailure, SessionSender } from "./session.js";
import {
  doorUrl,
  parseFrame,
  type Transport,
  type TransportClosed,
  type TransportContext,
  type TransportEvents,
  type TransportFactory,
} from "./transport.js";

/** Splits a text stream into lines (`\n`, `\r\n` or `\r`), keeping an unfinished tail. */
export class LineSplitter {
  private tail = "";
  private lastWasCr = false;

  push(chunk: string, onLine: (line: string) => void): void {
    let text = chunk;
    if (this.lastWasCr && text.startsWith("\n")) text = text.slice(1);
    this.lastWasCr = false;
    const parts = (this.tail + text).split(/\r\n|\n|\r/);
    this.tail = parts.pop() ?? "";
    if (text.endsWith("\r")) this.lastWasCr = true;
    for (const line of parts) onLine(line);
  }
}

/** An SSE event parser (only what the server sends: `data:`, `id:`, `retry:`, comments). */
export class SseParser {
  private lines = new LineSplitter();
  private data: string[] = [];

  push(chunk: string, onData: (data: string) => void): void {
    this.lines.push(chunk, (line) => {
      if (line === "") {
        if (this.data.length) onData(this.data.join("\n"));
        this.data = [];
        return;
      }
      if (line.startsWith(":")) return; // a heartbeat comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      // `id:` (the cursor, which we do not use) and `retry:` need nothing.
    });
  }
}

function streamingFactory(name: "sse" | "http-stream", path: string, accept: string): TransportFactory {
  return {
    unavailable(ctx) {
      return typeof ctx.fetch === "function" ? null : "no fetch() here";
    },
    open(ctx: TransportContext, events: TransportEvents): Transport {
      const abort = new AbortController();
      let over = false;
      const finish = (why: TransportClosed) => {
        if (over) return;
        over = true;
        abort.abort();
        sender.stop();
        events.closed(why);
      };
      const sender = new SessionSender(ctx, events, finish);

      const onFrame = (frame: ServerFrame) => {
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
          const sse = new SseParser();
          const ndjson = new LineSplitter();
          for (;;) {
            const { value, done } = await reader.read();
            if (done || over) break;
            events.activity();
            const text = decoder.decode(value, { stream: true });
            if (name === "sse") {
              sse.push(text, (data) => {
                const frame = parseFrame(data, ctx.log);
                if (frame) onFrame(frame);
              });
            } else {
              ndjson.push(text, (line) => {
                if (!line.trim()) return; // a heartbeat
                const frame = parseFrame(line, ctx.log);
                if (frame) onFrame(frame);
              });
            }
          }
          finish({ code: "transport", message: `GET ${path}: the stream ended` });
        } catch (e) {
          finish({ code: "transport", message: `GET ${path} failed: ${(e as Error).message}` });
        }
      })();

      return {
        name,
        send(commands: ClientCommand[]) {
          if (!over) sender.send(commands);
        },
        close() {
          over = true;
          abort.abort();
          // The stream's end ends the session on the server: no farewell needed.
          sender.stop();
        },
      };
    },
  };
}

export const sse = streamingFactory("sse", "/sse", "text/event-stream");
export const httpStream = streamingFactory("http-stream", "/stream", "application/x-ndjson");
