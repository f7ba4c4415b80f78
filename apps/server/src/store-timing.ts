/**
 * A store whose calls are timed: directory, mailbox, queue and top-level calls report their
 * duration to `observe`. The proxies call the real methods on the real objects, so adapters that
 * keep state in private fields keep working.
 */
import type { Store } from "@mailroom/store";

export type Observe = (operation: string, seconds: number, ok: boolean) => void;

/** Calls that are not store work (closing, handing out a mailbox handle) are passed through untimed. */
const UNTIMED = new Set<PropertyKey>(["close", "mailbox", "constructor"]);

function timeCall(operation: string, call: () => unknown, observe: Observe): unknown {
  const started = performance.now();
  const done = (ok: boolean): void => observe(operation, (performance.now() - started) / 1000, ok);
  let result: unknown;
  try {
    result = call();
  } catch (error) {
    done(false);
    throw error;
  }
  if (result instanceof Promise) {
    return result.then(
      (value: unknown) => {
        done(true);
        return value;
      },
      (error: unknown) => {
        done(false);
        throw error;
      },
    );
  }
  done(true);
  return result;
}

/** Wraps every method of `target` (an object of the store) so its calls are timed as `prefix.method`. */
function timedObject<T extends object>(target: T, prefix: string, observe: Observe, skip: ReadonlySet<PropertyKey> = UNTIMED): T {
  const cache = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(inner, property) {
      const value: unknown = Reflect.get(inner, property, inner);
      if (typeof value !== "function") return value;
      const method = value as (...args: unknown[]) => unknown;
      if (skip.has(property) || typeof property === "symbol") return method.bind(inner);
      let wrapped = cache.get(property);
      if (!wrapped) {
        const operation = `${prefix}${String(property)}`;
        wrapped = (...args: unknown[]) => timeCall(operation, () => method.apply(inner, args), observe);
        cache.set(property, wrapped);
      }
      return wrapped;
    },
  });
}

export function timedStore(store: Store, observe: Observe): Store {
  const directory = timedObject(store.directory, "directory.", observe);
  // A third-party adapter may predate the queue; the proxy must not invent one.
  const queue = (store as { queue?: Store["queue"] }).queue;
  const timedQueue = queue ? timedObject(queue, "queue.", observe) : queue;
  const top = timedObject(store, "store.", observe);
  return new Proxy(store, {
    get(target, property) {
      if (property === "directory") return directory;
      if (property === "queue") return timedQueue;
      if (property === "mailbox") {
        return (id: Parameters<Store["mailbox"]>[0]) => timedObject(target.mailbox(id), "mailbox.", observe);
      }
      return Reflect.get(top, property);
    },
  });
}
