// What the SDK reads from a connection token (a JWT) without verifying it: its expiry, so a
// token that is already stale is replaced before it is sent (the browser cannot read why a
// WebSocket upgrade was refused, so a server's 401 `token_expired` is not always visible).

/** The `exp` claim of a JWT, in seconds since the epoch, or undefined when it has none. */
export function tokenExpiry(token: string | undefined): number | undefined {
  if (!token) return undefined;
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const json = base64UrlDecode(parts[1]);
    const claims = JSON.parse(json) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp : undefined;
  } catch {
    return undefined;
  }
}

function base64UrlDecode(text: string): string {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * How long before `exp` to refresh: a quarter of the remaining lifetime, at least 1 s and at
 * most 30 s, so a token of a few seconds is still refreshed in time and an hour-long one is
 * not refreshed needlessly early.
 */
export function refreshMargin(lifetimeMs: number): number {
  return Math.max(1_000, Math.min(30_000, lifetimeMs / 4));
}

/** Whether `token` should be replaced before connecting with it. */
export function isStale(token: string | undefined, nowMs: number): boolean {
  const exp = tokenExpiry(token);
  return exp !== undefined && exp * 1000 - nowMs < 1_000;
}
