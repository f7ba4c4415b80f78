import { fstatSync, statSync } from "node:fs";
import { closeFd, fsyncFd, openReadOnly } from "./fdio.js";
import { isErrno } from "./errors.js";
import { UNSYNCABLE, type SyncPolicy } from "./fsutil.js";

export interface Batch {
  readonly promise: Promise<void>;
  resolve(): void;
  reject(error: unknown): void;
}

/** A promise with its settle functions, for a group of callers that share one outcome. */
export function newBatch(): Batch {
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

/** How long a directory's descriptor stays open after its last flush. */
const LINGER_MS = 1_000;
/** Idle descriptors kept open at most; past this an idle directory's descriptor is closed at once. */
const MAX_LINGERING = 64;

interface DirGroup {
  readonly commit: GroupCommit;
  fd: number | undefined;
  /** Device and inode the descriptor was opened on, to notice a directory replaced under our feet. */
  identity: string;
  linger: ReturnType<typeof setTimeout> | undefined;
}

/**
 * Group commit per directory for one store instance: concurrent deliveries into the same new/ share one
 * directory fsync. The directory's descriptor stays open while deliveries keep coming and for a second
 * after the last one, so a steady trickle of single deliveries costs one fsync each rather than open +
 * fsync + close (two thread-pool round trips fewer per message). At most 64 idle descriptors linger;
 * a lingering descriptor is only reused if the path still names the same directory.
 */
export class DirSyncs {
  private readonly groups = new Map<string, DirGroup>();
  private lingering = 0;

  constructor(
    private readonly policy: SyncPolicy,
    /** Replaces the built-in flush (tests). */
    private readonly flushDir?: (path: string) => Promise<void>,
  ) {}

  /** Resolves once `dir`'s entries as of this call are durable. */
  sync(dir: string): Promise<void> {
    if (!this.policy.fsync) return Promise.resolve();
    const group = this.groups.get(dir);
    if (group === undefined) return this.open(dir).commit.sync();
    if (this.stopLingering(group) && group.fd !== undefined && identityOf(dir) !== group.identity) this.closeFd(group);
    return group.commit.sync();
  }

  /** Closes every lingering descriptor (store close). */
  close(): void {
    for (const [dir, group] of this.groups) {
      if (!this.stopLingering(group)) continue;
      this.closeFd(group);
      this.groups.delete(dir);
    }
  }

  /** Cancels the group's linger timer; false if it was not lingering. */
  private stopLingering(group: DirGroup): boolean {
    if (group.linger === undefined) return false;
    clearTimeout(group.linger);
    group.linger = undefined;
    this.lingering--;
    return true;
  }

  private closeFd(group: DirGroup): void {
    const fd = group.fd;
    group.fd = undefined;
    if (fd !== undefined) closeFd(fd).catch(() => undefined);
  }

  private open(dir: string): DirGroup {
    let unsyncable = false;
    const flush = async (): Promise<void> => {
      if (this.flushDir) return this.flushDir(dir);
      if (unsyncable) return;
      try {
        if (group.fd === undefined) {
          const fd = await openReadOnly(dir);
          group.fd = fd;
          group.identity = identityOfFd(fd);
        }
        await fsyncFd(group.fd);
      } catch (error) {
        this.closeFd(group);
        // Some platforms cannot open or sync directories; there the rename is the best we get.
        if (isErrno(error, ...UNSYNCABLE)) unsyncable = true;
        else throw error;
      }
    };
    const forget = (): void => {
      group.linger = undefined;
      this.closeFd(group);
      if (this.groups.get(dir) === group) this.groups.delete(dir);
    };
    const commit = new GroupCommit(flush, () => {
      if (group.fd === undefined || this.lingering >= MAX_LINGERING) return forget();
      this.lingering++;
      group.linger = setTimeout(() => {
        this.lingering--;
        forget();
      }, LINGER_MS);
      // A lingering descriptor must not keep a process alive that has nothing else to do.
      (group.linger as { unref?: () => void }).unref?.();
    });
    const group: DirGroup = { commit, fd: undefined, identity: "", linger: undefined };
    this.groups.set(dir, group);
    return group;
  }

  /** Directories with a sync in flight, waiting, or a descriptor lingering (for tests and diagnostics). */
  get active(): number {
    return this.groups.size;
  }

  /** Directories with a sync in flight or waiting. */
  get busy(): number {
    let n = 0;
    for (const group of this.groups.values()) if (!group.commit.idle) n++;
    return n;
  }
}

function identityOf(path: string): string {
  const info = statSync(path, { throwIfNoEntry: false });
  return info === undefined ? "" : `${info.dev}:${info.ino}`;
}

function identityOfFd(fd: number): string {
  const info = fstatSync(fd);
  return `${info.dev}:${info.ino}`;
}
