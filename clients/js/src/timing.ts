// Time as the SDK sees it: a clock that tests replace with a fake one, and the reconnect
// backoff. Nothing here touches the network.

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * The delay before reconnect attempt `attempt` (0 for the first): exponential from `min`,
 * capped at `max`, with jitter so that many clients dropped at once (a server restart) do not
 * come back in one wave. The result stays within [min, max].
 */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  // "Equal jitter": half the ceiling fixed, half random; never below `min`.
  const delay = ceiling / 2 + random() * (ceiling / 2);
  return Math.round(Math.max(min, Math.min(max, delay)));
}
