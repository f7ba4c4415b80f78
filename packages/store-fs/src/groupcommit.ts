import { promises as fsp } from "node:fs";
import { isErrno } from "./errors.js";
import type { SyncPolicy } from "./fsutil.js";

/** Errors of platforms that cannot open or sync directories (Windows, some network file systems). */
const UNSYNCABLE = ["EISDIR", "EINVAL", "EPERM", "ENOTSUP", "EBADF"];

interface Batch {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A batch may fail while its waiters are still being attached; they each get the rejection anyway.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * Group commit: many callers that each changed something (linked a file into a directory) share one
 * flush. The guarantee is per caller: the promise returned by `sync()` settles with the result of a
 * flush that STARTED after `sync()` was called. A caller arriving while a flush is in flight therefore
 * joins the next batch, which starts as soon as the running flush ends; everybody who arrived in the
 * meantime shares it. A failed flush rejects exactly its own batch, and the next batch still runs.
 */
export class GroupCommit {
  private waiting: Batch | null = null;
  private running = false;

  constructor(
    private readonly flush: () => Promise<void>,
    private readonly onIdle?: () => void,
  ) {}

  /** Resolves once a flush that began after this call has succeeded. */
  sync(): Promise<void> {
    const batch = (this.waiting ??= newBatch());
    if (!this.running) void this.drain();
    return batch.promise;
  }

  get idle(): boolean {
    return !this.running && this.waiting === null;
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      for (;;) {
        const batch = this.waiting;
        if (batch === null) break;
        // Taken before the flush is issued: whoever calls sync() from now on needs a later flush.
        this.waiting = null;
        try {
          await this.flush();
          batch.resolve();
        } catch (error) {
          batch.reject(error);
        }
      }
    } finally {
      // Same tick as the last `waiting === null` check, so no caller can be left without a drain.
      this.running = false;
    }
    this.onIdle?.();
  }
}

/** One fsync of a directory's entry list, tolerating platforms that cannot sync directories. */
export async function fsyncDirOnce(path: string): Promise<void> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(path, "r");
    await handle.sync();
  } catch (error) {
    if (!isErrno(error, ...UNSYNCABLE)) throw error;
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/**
 * Group commit per directory for one store instance: concurrent deliveries into the same new/ share one
 * directory fsync. While a directory is busy its descriptor stays open, so a stream of batches costs
 * one fsync each rather than open + fsync + close; it is closed and the entry dropped as soon as the
 * directory is idle, so the map holds only directories with a sync in flight.
 */
export class DirSyncs {
  private readonly groups = new Map<string, GroupCommit>();

  constructor(
    private readonly policy: SyncPolicy,
    /** Replaces the built-in flush (tests). */
    private readonly flushDir?: (path: string) => Promise<void>,
  ) {}

  /** Resolves once `dir`'s entries as of this call are durable. */
  sync(dir: string): Promise<void> {
    if (!this.policy.fsync) return Promise.resolve();
    return (this.groups.get(dir) ?? this.open(dir)).sync();
  }

  private open(dir: string): GroupCommit {
    let handle: fsp.FileHandle | undefined;
    let unsyncable = false;
    const drop = (): void => {
      const old = handle;
      handle = undefined;
      old?.close().catch(() => undefined);
    };
    const flush = async (): Promise<void> => {
      if (this.flushDir) return this.flushDir(dir);
      if (unsyncable) return;
      try {
        handle ??= await fsp.open(dir, "r");
        await handle.sync();
      } catch (error) {
        drop();
        // Some platforms cannot open or sync directories; there the rename is the best we get.
        if (isErrno(error, ...UNSYNCABLE)) unsyncable = true;
        else throw error;
      }
    };
    const group: GroupCommit = new GroupCommit(flush, () => {
      drop();
      if (this.groups.get(dir) === group) this.groups.delete(dir);
    });
    this.groups.set(dir, group);
    return group;
  }

  /** Directories with a sync in flight or waiting (for tests and diagnostics). */
  get active(): number {
    return this.groups.size;
  }
}
