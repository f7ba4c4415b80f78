// Shared by the hostile-input tests of both protocol packages (packages/*-protocol/test/hostile).
import { Buffer } from "node:buffer";
import type { Socket } from "node:net";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/**
 * Shared pieces of the hostile-input tests: a trap for errors that escape the server, a memory probe,
 * and writes split where the test says.
 */

/** Collects unhandled rejections and uncaught exceptions while installed. */
export function trapProcessErrors(): { readonly errors: unknown[]; uninstall(): void } {
  const errors: unknown[] = [];
  const onRejection = (reason: unknown): void => void errors.push(reason);
  const onException = (error: unknown): void => void errors.push(error);
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  return {
    errors,
    uninstall() {
      process.off("unhandledRejection", onRejection);
      process.off("uncaughtException", onException);
    },
  };
}

let collect: (() => void) | null | undefined;

function findCollector(): (() => void) | null {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (typeof exposed === "function") return exposed;
  const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
  if (bun) return () => bun.gc(true);
  try {
    // Node: turn the flag on at run time and fetch gc() from a fresh context.
    setFlagsFromString("--expose-gc");
    const gc: unknown = runInNewContext("gc");
    return typeof gc === "function" ? (gc as () => void) : null;
  } catch {
    return null;
  }
}

/** Whether `collectGarbage` really collects here; without it memory readings include garbage. */
export function canCollectGarbage(): boolean {
  if (collect === undefined) collect = findCollector();
  return collect !== null;
}

/** A full garbage collection where the runtime allows one. */
export function collectGarbage(): void {
  if (collect === undefined) collect = findCollector();
  collect?.();
}

/** Live JS heap plus Buffer memory, after a collection: what the process really holds. */
export function heldBytes(): number {
  collectGarbage();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

/** Samples held memory every `everyMs` until stopped; `peak()` is the largest growth over the start. */
export function memorySampler(everyMs = 100): { stop(): number } {
  const start = heldBytes();
  let peak = 0;
  const timer = setInterval(() => {
    peak = Math.max(peak, heldBytes() - start);
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, heldBytes() - start);
    },
  };
}

/** Writes `bytes` in pieces cut at `cuts`, yielding between pieces so they travel separately. */
export async function writeSplit(socket: Socket, bytes: Uint8Array, cuts: readonly number[]): Promise<void> {
  let at = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut <= at) continue;
    socket.write(Buffer.from(bytes.subarray(at, cut)));
    at = cut;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Streams at least `total` octets made of whole repeats of `pattern`, respecting backpressure, so the
 * client holds one chunk, not the attack. Stops quietly when the server closes; returns octets written.
 */
export async function flood(socket: Socket, pattern: Uint8Array, total: number): Promise<number> {
  const repeats = Math.max(1, Math.ceil((64 * 1024) / pattern.length));
  const chunk = Buffer.concat(Array.from({ length: repeats }, () => pattern));
  let sent = 0;
  let closed = socket.destroyed;
  const onClose = (): void => {
    closed = true;
  };
  socket.once("close", onClose);
  try {
    while (sent < total && !closed && socket.writable) {
      sent += chunk.length;
      if (!socket.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            socket.off("drain", done);
            socket.off("close", done);
            resolve();
          };
          socket.on("drain", done);
          socket.on("close", done);
        });
      }
    }
  } finally {
    socket.off("close", onClose);
  }
  return sent;
}

/** Polls `check` until it is true or `timeoutMs` passed. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Sends `text` one character per `everyMs` until the peer closes; returns how many went out. */
export async function dribble(client: { readonly closed: boolean; write(text: string): void }, text: string, everyMs: number): Promise<number> {
  let sent = 0;
  for (const ch of text) {
    if (client.closed) break;
    client.write(ch);
    sent++;
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  return sent;
}
