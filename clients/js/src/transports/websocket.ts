// The WebSocket door (`GET /ws`): one text message per frame, both ways. The token goes in the
// URL: a `connect` frame would be answered `bad_request` by a server that admits anonymous
// clients (it sends `connected` at once), and browsers cannot set headers on a WebSocket.

import type { ClientCommand } from "../types.js";
import { doorUrl, parseFrame, type Transport, type TransportContext, type TransportEvents, type TransportFactory } from "./transport.js";

/** Close codes of the server (docs/protocol-notes.md) as error codes. */
const CLOSE_CODES: Record<number, string> = {
  1001: "unavailable",
  1002: "bad_request",
  4001: "token_expired",
  4003: "unauthorized",
  4004: "forbidden",
  4005: "unavailable",
  4008: "slow_consumer",
  4009: "unavailable",
};

function socketUrl(ctx: TransportContext): string {
  return doorUrl(ctx, "/ws").replace(/^http/, "ws");
}

function webSocketClass(ctx: TransportContext) {
  return ctx.WebSocket ?? (globalThis as { WebSocket?: TransportContext["WebSocket"] }).WebSocket;
}

export const websocket: TransportFactory = {
  unavailable(ctx) {
    return webSocketClass(ctx) ? null : "no WebSocket here: pass one as the `WebSocket` option (such as the `ws` package's)";
  },

  open(ctx: TransportContext, events: TransportEvents): Transport {
    const WS = webSocketClass(ctx)!;
    const ws = new WS(socketUrl(ctx));
    let over = false;

    const finish = (code: string, message: string) => {
      if (over) return;
      over = true;
      events.closed({ code, message });
    };

    ws.onmessage = (event: MessageEvent) => {
      if (over) return;
      events.activity();
      const data = event.data as unknown;
      const text = typeof data === "string" ? data : new TextDecoder().decode(data as ArrayBuffer);
      const frame = parseFrame(text, ctx.log);
      if (frame) events.frame(frame);
    };
    ws.onclose = (event: CloseEvent) => {
      const code = CLOSE_CODES[event.code] ?? "transport";
      finish(code, `WebSocket closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`);
    };
    // An error is always followed by a close; nothing to do until then. (A refused upgrade
    // shows as 1006 without a reason: browsers hide the HTTP status.)
    ws.onerror = () => {};

    return {
      name: "websocket",
      send(commands: ClientCommand[]) {
        if (over || ws.readyState !== 1) return;
        for (const command of commands) ws.send(JSON.stringify(command));
      },
      close() {
        over = true;
        ws.onmessage = ws.onclose = null;
        try {
          ws.close(1000);
        } catch {
          /* never opened */
        }
      },
    };
  },
};
