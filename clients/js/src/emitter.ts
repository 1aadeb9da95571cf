// A small typed event emitter. A listener that throws is reported to `onListenerError` and
// never breaks the SDK's own processing (a bug in an app's handler must not stop delivery).

type Listener<T> = (payload: T) => void;

export class Emitter<Events extends object> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Called with an error a listener threw; subclasses send it to the SDK's logger. */
  protected onListenerError(event: PropertyKey, error: unknown): void {
    console.error(`switchboard: a listener of "${String(event)}" threw`, error);
  }

  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return this;
  }

  once<K extends keyof Events>(event: K, listener: Listener<Events[K]>): this {
    const wrapper: Listener<Events[K]> = (payload) => {
      this.off(event, wrapper);
      listener(payload);
    };
    return this.on(event, wrapper);
  }

  off<K extends keyof Events>(event: K, listener?: Listener<Events[K]>): this {
    if (!listener) this.listeners.delete(event);
    else this.listeners.get(event)?.delete(listener as Listener<never>);
    return this;
  }

  protected listenerCount(event: keyof Events): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<Events[K]>)(payload);
      } catch (e) {
        this.onListenerError(event, e);
      }
    }
  }
}
