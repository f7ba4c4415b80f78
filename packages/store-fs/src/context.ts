import { promises as fsp, statSync } from "node:fs";
import { setImmediate } from "node:timers";
import type { Logger } from "@mailroom/store";
import type { MailModes, SyncPolicy } from "./fsutil.js";
import { isErrno } from "./errors.js";
import type { DirSyncs } from "./groupcommit.js";
import type { DeliveryLog } from "./deliverylog.js";
import type { BulkSync } from "./syncfs.js";
import type { MailboxLocation } from "./layout.js";
import type { SpaceReserve } from "./reserve.js";

/** What every part of one store instance shares. */
export interface StoreContext {
  readonly root: string;
  readonly policy: SyncPolicy;
  /** For maildirs and message files: owner-only, plus the group bits of the root (see mailModesOf). */
  readonly mailModes: MailModes;
  readonly host: string;
  readonly logger: Logger;
  readonly cache: MailboxCaches;
  /** Maildirs whose stale tmp/ files this instance already cleaned. */
  readonly prepared: Set<string>;
  /** Group commit of the directory fsyncs that make new messages durable. */
  readonly dirSyncs: DirSyncs;
  /** Group commit of small deliveries' message files (null: every file is fsynced on its own). */
  readonly deliveryLog: DeliveryLog | null;
  /** Messages up to this many octets are read with synchronous calls (0: never). */
  readonly syncReadBytes: number;
  /** `locateMailbox` under this root, remembered for recently used ids. */
  readonly locate: (id: string) => MailboxLocation;
  /** Makes the delivery log's files durable in bulk (ended with the store). */
  readonly bulk: BulkSync;
  /** Retries for delivery logs that opening the store left to another container's process. */
  readonly laterRecovery: { stop(): void } | null;
  /** Refuses new mail that would eat into the file system's last `min_free_mb` (null: no reserve). */
  readonly space: SpaceReserve | null;
}

/** What listing learns about one message file, kept so the next listing needs no stat or read. */
export interface FileFacts {
  readonly receivedAt: number;
  /** Octets a reader gets. */
  readonly size: number;
  /** Bare LF must become CRLF on the way out (foreign mail only). */
  readonly convert: boolean;
}

export interface MailboxCache {
  /** Keyed by base name, which survives flag renames. */
  readonly facts: Map<string, FileFacts>;
  /** UID → file as of the last scan, so that reading message after message needs no readdir each. */
  paths: Map<string, { readonly path: string; readonly base: string }>;
  /** CRLF sizes of foreign files without `W=`, shared with later processes via `mailroom-sizes.json`. */
  crlfSizes: Map<string, number> | null;
  crlfSizesDirty: boolean;
}

/** Per-mailbox caches, least recently used evicted, so a server with many users stays bounded. */
export class MailboxCaches {
  private readonly boxes = new Map<string, MailboxCache>();

  constructor(private readonly max = 1_000) {}

  get(dir: string): MailboxCache {
    let box = this.boxes.get(dir);
    if (box) {
      this.boxes.delete(dir);
    } else {
      box = { facts: new Map(), paths: new Map(), crlfSizes: null, crlfSizesDirty: false };
    }
    this.boxes.set(dir, box);
    if (this.boxes.size > this.max) this.boxes.delete(this.boxes.keys().next().value!);
    return box;
  }
}

/**
 * A small JSON file re-read only when it changed on disk (inode, size or mtime), because another
 * process may rewrite it at any time (`mailroom user add` while the server runs).
 *
 * The check is a synchronous stat on purpose: on a file whose inode is in the kernel's cache it takes
 * a few microseconds, where a thread-pool stat cost tens of microseconds of hand-off on the event loop
 * (about a tenth of a small message's CPU). One RCPT asks several times (domain, alias, user) within
 * one turn of the event loop; the stat is made once per turn: a change another process makes during
 * that turn is indistinguishable from one made just after it. Only the read of a changed file goes to
 * the thread pool.
 */
export class JsonFile<T> {
  private signature = "";
  private value: T | undefined;
  /**
   * The read of a changed file under way, and the signature that asked for it. Every load until it is
   * done waits for it: an answer from the copy it replaces would be older than a change the caller may
   * already have seen finish (a `user add` that returned before the RCPT came in).
   */
  private reading: { readonly signature: string; readonly value: Promise<T> } | undefined;
  private checkedIn = -1;

  constructor(
    readonly path: string,
    private readonly parse: (raw: unknown) => T,
    private readonly empty: () => T,
  ) {}

  async load(): Promise<T> {
    const turn = currentTurn();
    if (turn === this.checkedIn) {
      if (this.reading !== undefined) return this.reading.value;
      if (this.value !== undefined) return this.value;
    }
    this.checkedIn = turn;
    const info = statSync(this.path, { throwIfNoEntry: false });
    if (info === undefined) {
      this.signature = "";
      this.value = undefined;
      this.reading = undefined;
      return this.empty();
    }
    const signature = `${info.ino}:${info.size}:${info.mtimeMs}:${info.ctimeMs}`;
    if (this.reading?.signature === signature) return this.reading.value;
    if (signature === this.signature && this.value !== undefined) return this.value;
    const reading = { signature, value: this.read() };
    this.reading = reading;
    try {
      const value = await reading.value;
      // A later read (the file changed again meanwhile) or an invalidate() has the last word.
      if (this.reading === reading) {
        this.signature = signature;
        this.value = value;
      }
      return value;
    } finally {
      if (this.reading === reading) this.reading = undefined;
    }
  }

  private async read(): Promise<T> {
    let text: string;
    try {
      text = await fsp.readFile(this.path, "utf8");
    } catch (error) {
      if (!isErrno(error, "ENOENT")) throw error;
      return this.empty();
    }
    return this.parse(JSON.parse(text));
  }

  /** Forget the cached copy (after we wrote the file ourselves). */
  invalidate(): void {
    this.signature = "";
    this.value = undefined;
    this.reading = undefined;
    this.checkedIn = -1;
  }
}

let turn = 0;
let turnEnds = false;

/** A number that changes between turns of the event loop (bumped by one setImmediate per busy turn). */
function currentTurn(): number {
  if (!turnEnds) {
    turnEnds = true;
    setImmediate(() => {
      turn++;
      turnEnds = false;
    });
  }
  return turn;
}
