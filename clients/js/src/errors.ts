// The one error type of the SDK: `{ code, message }`, as every awaited call rejects with.

import type { ErrorCode, ErrorInfo } from "./types.js";

export class SwitchboardError extends Error implements ErrorInfo {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
  }

  /** A plain `{ code, message }` (for events and logs). */
  toJSON(): ErrorInfo {
    return { code: this.code, message: this.message };
  }
}

/** Codes after which trying the same thing again later can succeed. */
const TRANSIENT = new Set<string>(["rate_limited", "unavailable", "internal", "timeout", "transport"]);

export function isTransient(code: ErrorCode): boolean {
  return TRANSIENT.has(code);
}

/** Any thrown value as a SwitchboardError (a network failure becomes `transport`). */
export function toSwitchboardError(e: unknown, fallback: ErrorCode = "transport"): SwitchboardError {
  if (e instanceof SwitchboardError) return e;
  if (e && typeof e === "object" && "code" in e && "message" in e && typeof e.code === "string") {
    return new SwitchboardError(e.code, String(e.message));
  }
  return new SwitchboardError(fallback, e instanceof Error ? e.message : String(e));
}
