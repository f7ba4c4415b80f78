import { createHash, randomBytes } from "node:crypto";
import { afterEach, expect } from "vitest";
import type { Lease, Mailbox, MailboxId, MessageInfo, Store } from "../contract.js";
import type { ProcessStamp } from "../liveness.js";
import { isStoreError, type StoreErrorCode } from "../errors.js";
import { fromBytes, readAll } from "../streams.js";

export interface ConformanceOptions {
  /** Shown in test names, e.g. "maildir". */
  readonly name: string;
  /**
   * Opens a store on a namespace. Distinct namespaces are empty and isolated; the SAME namespace opened
   * twice is "a restart" or "a second server process sharing the store". Namespaces are
   * [a-z][a-z0-9_]{0,39}.
   */
  open(namespace: string): Promise<Store>;
  /** Optional clean-up of a namespace after its tests. */
  destroy?(namespace: string): Promise<void>;
  /**
   * For stores that record which process holds a lease or claim (`processStamp`): adds the tests that
   * such a store takes over what a process that has ended held, and nothing else.
   */
  readonly owners?: OwnerHooks;
}

/**
 * For stores that record which process holds a lease or queue claim (`processStamp`): a way for the
 * suite to overwrite that record, standing in for a holder that is another process. `owner` null
 * means "nothing recorded" (a holder without /proc, or written by an older version).
 */
export interface OwnerHooks {
  /** Overwrites the holder recorded with the live lease of `mailbox`. */
  setLeaseOwner(namespace: string, mailbox: MailboxId, owner: ProcessStamp | null): Promise<void>;
  /** Overwrites the holder recorded with the live claim on queue item `id`. */
  setClaimOwner(namespace: string, id: string, owner: ProcessStamp | null): Promise<void>;
}

/**
 * What each concern's tests get: fresh namespaces and stores that are closed (and namespaces that are
 * destroyed) after every test, whether it passed or not.
 */
export interface Harness {
  /** A namespace no other test uses. */
  namespace(): string;
  /** Opens (another instance of) a store on `namespace`; closed after the test. */
  open(namespace: string): Promise<Store>;
  /** A fresh namespace and one store on it. */
  fresh(): Promise<{ readonly ns: string; readonly store: Store }>;
}

// Random per process, so that two runs against one shared database never meet.
const runId = randomBytes(4).readUInt32BE(0).toString(36).padStart(7, "0").slice(0, 7);
let counter = 0;

/** Installs the clean-up hook in the calling `describe` block and returns the harness for its tests. */
export function useHarness(options: ConformanceOptions): Harness {
  let stores: Store[] = [];
  let namespaces: string[] = [];

  afterEach(async () => {
    const toClose = stores;
    const toDestroy = namespaces;
    stores = [];
    namespaces = [];
    const errors: unknown[] = [];
    for (const store of toClose) {
      try {
        await store.close();
      } catch (error) {
        errors.push(error);
      }
    }
    if (options.destroy) {
      for (const ns of toDestroy) {
        try {
          await options.destroy(ns);
        } catch (error) {
          errors.push(error);
        }
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, "conformance clean-up failed");
  });

  const harness: Harness = {
    namespace() {
      // "cf" + run id + counter stays far below the 40-character limit and matches [a-z][a-z0-9_]*.
      const ns = `cf_${runId}_${(counter++).toString(36)}`;
      namespaces.push(ns);
      return ns;
    },
    async open(ns) {
      const store = await options.open(ns);
      stores.push(store);
      return store;
    },
    async fresh() {
      const ns = harness.namespace();
      return { ns, store: await harness.open(ns) };
    },
  };
  return harness;
}

/** Asserts that `action` fails with a StoreError of this code, and returns the error. */
export async function expectStoreError(
  action: Promise<unknown> | (() => unknown),
  code: StoreErrorCode,
): Promise<Error> {
  let outcome: { ok: true; value: unknown } | { ok: false; error: unknown };
  try {
    const value = typeof action === "function" ? await action() : await action;
    outcome = { ok: true, value };
  } catch (error) {
    outcome = { ok: false, error };
  }
  if (outcome.ok) {
    expect.fail(`expected a StoreError "${code}", but the call succeeded with ${describeValue(outcome.value)}`);
  }
  const error = outcome.error;
  if (!isStoreError(error)) {
    expect.fail(`expected a StoreError "${code}", got ${describeValue(error)}`);
  }
  expect(error.code, `StoreError code (message: ${error.message})`).toBe(code);
  return error;
}

function describeValue(value: unknown): string {
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 200 ? `${text.slice(0, 200)}…` : text;
  } catch {
    return String(value);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const bytes = (text: string): Uint8Array => encoder.encode(text);
export const text = (data: Uint8Array): string => decoder.decode(data);

/** A small CRLF message whose body names `marker`, so that a misplaced copy is easy to spot. */
export function message(marker: string, extraBody = ""): Uint8Array {
  return bytes(
    `From: sender@remote.test\r\nTo: someone@example.test\r\nSubject: ${marker}\r\nMessage-ID: <${marker}@conformance>\r\n\r\n` +
      `body of ${marker}\r\n${extraBody}`,
  );
}

export async function appendBytes(
  mailbox: Mailbox,
  data: Uint8Array | string,
  options?: Parameters<Mailbox["append"]>[1],
): Promise<MessageInfo> {
  return mailbox.append(fromBytes(data, 1000), options);
}

export async function readBytes(mailbox: Mailbox, uid: string, bodyLines?: number): Promise<Uint8Array> {
  const stream = await mailbox.read(uid, bodyLines === undefined ? {} : { bodyLines });
  async function* checked(): AsyncGenerator<Uint8Array> {
    for await (const chunk of stream) {
      if (!(chunk instanceof Uint8Array)) expect.fail(`read() yielded ${typeof chunk}, not a Uint8Array`);
      yield chunk;
    }
  }
  return readAll(checked());
}

export async function uidsOf(mailbox: Mailbox): Promise<string[]> {
  return (await mailbox.list()).map((m) => m.uid);
}

/** Byte equality with a readable failure (first differing offset) instead of a 50,000-element diff. */
export function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what = "message"): void {
  if (actual.length === expected.length) {
    let i = 0;
    while (i < actual.length && actual[i] === expected[i]) i++;
    if (i === actual.length) return;
    expect.fail(`${what}: bytes differ at offset ${i} of ${actual.length}`);
  }
  expect.fail(
    `${what}: got ${actual.length} octets, expected ${expected.length}` +
      ` (got ${JSON.stringify(text(actual.subarray(0, 120)))}…, expected ${JSON.stringify(text(expected.subarray(0, 120)))}…)`,
  );
}

export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A source that yields `before`, then fails, as a client connection dropping mid-DATA would. */
export async function* failingSource(before: Uint8Array, error = new Error("source failed midway")): AsyncGenerator<Uint8Array> {
  yield before.subarray(0, Math.floor(before.length / 2));
  await sleep(1);
  yield before.subarray(Math.floor(before.length / 2));
  throw error;
}

export const holder = (what: string): string => `conformance ${what} pid ${process.pid}`;

/** Acquires with the default short ttl used all over the suite. */
export function lease(mailbox: Mailbox, ttlMs = 10_000, who = "test"): Promise<Lease> {
  return mailbox.acquireLease({ holder: holder(who), ttlMs });
}

/**
 * Stores are allowed to round timestamps a little (seconds in a file name, microseconds in a column);
 * this is the slack for "now" checks.
 */
export const CLOCK_SLACK_MS = 1_000;

/**
 * Every chunk in one buffer, overwritten with the next part as soon as the store asks for it: a
 * store that keeps a chunk instead of its octets (to write several together, say) stores the last
 * part over and over.
 */
export async function* oneReusedBuffer(data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  const buffer = new Uint8Array(size);
  for (let offset = 0; offset < data.length; offset += size) {
    const part = data.subarray(offset, Math.min(offset + size, data.length));
    buffer.set(part);
    yield buffer.subarray(0, part.length);
    buffer.fill(0x21);
  }
}

/** Abort listeners still on `signal` (Node's own count; 0 where the runtime cannot tell). */
export async function listenerCount(signal: AbortSignal): Promise<number> {
  const events = (await import("node:events")) as { getEventListeners?: (target: EventTarget, type: string) => unknown[] };
  return events.getEventListeners?.(signal, "abort").length ?? 0;
}
