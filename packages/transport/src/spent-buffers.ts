import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { runtimeName } from "./runtime.js";

/**
 * Every socket read is a fresh buffer, and so is every chunk read from a message file. Once used they
 * are garbage, but only a garbage collection gives their memory back, and V8 schedules collections by
 * how much JavaScript heap is used, not by these buffers: while a 50 MB message streamed through,
 * about 32 MB of spent buffers piled up before anything collected them. So the connections count
 * the octets they move, and after every 8 MiB (across all connections) a minor collection, which only
 * looks at recently allocated objects and takes about a millisecond, frees them. Where the runtime
 * offers no way to ask for one, counting is all that happens.
 */
const EVERY = 8 * 1024 * 1024;

type Collect = () => void;

let moved = 0;
let collect: Collect | null | undefined;

/** Notes that `octets` went through a buffer that is garbage once handled. */
export function noteSpentBytes(octets: number): void {
  moved += octets;
  if (moved < EVERY) return;
  moved = 0;
  collect ??= findCollector();
  collect?.();
}

/** Replaces the collector (tests); `undefined` goes back to finding the runtime's own. */
export function useCollector(fn: Collect | null | undefined): void {
  collect = fn;
  moved = 0;
}

/** The runtime's way to ask for a minor collection, or null where there is none. */
export function findCollector(): Collect | null {
  const g = globalThis as { gc?: (options?: unknown) => unknown; Bun?: { gc(force: boolean): void } };
  const runtime = runtimeName();
  if (runtime === "bun") return g.Bun ? () => g.Bun!.gc(false) : null;
  // Node or Deno started with --expose-gc (or --v8-flags=--expose-gc).
  if (typeof g.gc === "function") return minor(g.gc);
  if (runtime !== "node") return null;
  try {
    // Node makes the flag effective for contexts created after it is set; the function is only taken
    // from such a context, never installed globally.
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as unknown;
    return typeof gc === "function" ? minor(gc as (options?: unknown) => unknown) : null;
  } catch {
    return null;
  }
}

function minor(gc: (options?: unknown) => unknown): Collect {
  return () => {
    gc({ type: "minor" });
  };
}
