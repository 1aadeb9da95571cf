// Talking back on the one-way doors (PROTOCOL.md §5): commands go to `POST /session/<session>`
// as a JSON array, and the answer is the array of their replies, which are fed to the
// connection as frames like any other. One request at a time, so commands run in the order
// they were given, as they would over a WebSocket.

import type { ClientCommand, ServerFrame } from "../types.js";
import type { TransportClosed, TransportContext, TransportEvents } from "./transport.js";

/** Most commands the server takes in one request. */
const MAX_BATCH = 100;

export class SessionSender {
  private session: string | null = null;
  private queue: ClientCommand[] = [];
  private busy = false;
  private over = false;
  private readonly abort = new AbortController();

  constructor(
    private readonly ctx: TransportContext,
    private readonly events: TransportEvents,
    /** Ends the transport: a command that cannot be delivered makes the link unusable. */
    private readonly fail: (why: TransportClosed) => void,
    /** Where replies go (long polling keeps the replies of its own commands). */
    private readonly deliver: (reply: ServerFrame) => void = (reply) => events.frame(reply),
  ) {}

  /** The session of the `connected` frame: commands wait for it. */
  start(session: string): void {
    this.session = session;
    void this.pump();
  }

  send(commands: ClientCommand[]): void {
    this.queue.push(...commands);
    void this.pump();
  }

  stop(farewell: ClientCommand[] = []): void {
    this.over = true;
    this.abort.abort();
    if (this.session && farewell.length) {
      // Best effort, and `keepalive` lets it outlive a page being closed.
      this.ctx
        .fetch(this.url(), { method: "POST", body: JSON.stringify(farewell.slice(0, MAX_BATCH)), headers: PLAIN, keepalive: true })
        .catch(() => {});
    }
  }

  private url(): string {
    return `${this.ctx.baseUrl}/session/${encodeURIComponent(this.session!)}`;
  }

  private async pump(): Promise<void> {
    while (!this.busy && !this.over && this.session && this.queue.length) {
      const batch = this.queue.splice(0, MAX_BATCH);
      this.busy = true;
      let replies: unknown;
      try {
        const res = await this.ctx.fetch(this.url(), {
          method: "POST",
          body: JSON.stringify(batch),
          headers: PLAIN,
          signal: this.abort.signal,
        });
        if (!res.ok) {
          this.fail(await httpFailure(res, "POST /session"));
          return;
        }
        replies = await res.json();
      } catch (e) {
        if (!this.over) this.fail({ code: "transport", message: `POST /session failed: ${(e as Error).message}` });
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
        // `null` stands for a command that has no answer of its own: an empty reply.
        const reply = (replies as unknown[])[i] ?? { type: "reply", id: command.id };
        this.deliver(reply as ServerFrame);
      });
    }
  }
}

/**
 * `text/plain` keeps the POST a "simple" cross-origin request (no preflight); the server reads
 * the body as JSON whatever its type.
 */
const PLAIN = { "content-type": "text/plain;charset=UTF-8" };

/** An HTTP refusal as a transport ending, with the server's error code when it gave one. */
export async function httpFailure(res: Response, what: string): Promise<TransportClosed> {
  let code = "transport";
  let message = `${what} answered HTTP ${res.status}`;
  try {
    const body = (await res.json()) as { error?: { code?: unknown; message?: unknown } };
    if (body?.error && typeof body.error.code === "string") {
      code = body.error.code;
      message += `: ${String(body.error.message ?? code)}`;
    }
  } catch {
    /* not JSON: a proxy's page */
  }
  return { code, message };
}
