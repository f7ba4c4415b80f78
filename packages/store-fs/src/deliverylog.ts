import { randomBytes } from "node:crypto";
import { basename, dirname, join, sep } from "node:path";
import { currentBootId, processStamp, type Logger } from "@mailroom/store";
import { GroupCommit, newBatch, type Batch } from "./groupcommit.js";
import { UNSYNCABLE, fsyncDir, makeDirs, unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { closeFd, fdatasyncFd, openExisting, openNew, writevAt } from "./fdio.js";
import { encodeRecord, type LogOwner } from "./logformat.js";
import { parseName, uidOfBase } from "./filenames.js";
import type { BulkSync } from "./syncfs.js";
import type { FileThread } from "./filethread.js";

/**
 * The delivery log: group commit for the message files themselves.
 *
 * A durable Maildir delivery costs an fsync of the message file and one of new/, and on most disks
 * the file's fsync (a cache flush per message) is what limits ingest. With the log, a small message
 * is still written into tmp/ and renamed into new/ exactly as before, but without an fsync: what makes
 * it durable before the 250 is a copy appended to this log, and the appends of every delivery that
 * arrives while one fdatasync runs share the next one. About once a second the log is retired: the
 * files it covers are made durable in bulk (one syncfs per file system, see BulkSync), then the log
 * file is made unreplayable (kept for the next log, see below, or deleted). A log left behind by a
 * crash is replayed when the store is next opened (see logrecovery.ts).
 *
 * Ordering, which is what the crash guarantees rest on: the record is durable before the rename makes
 * the message visible, and the rename happens before deliver() resolves. So every message a client
 * saw accepted has a durable record until its file is durable, and a visible message whose record
 * never became durable cannot exist.
 *
 * Where the file thread runs (filethread.ts), a log's appends and fdatasyncs are made there too, in
 * order with the tmp/ writes, and a single-mailbox delivery's rename waits there for the append that
 * carries its record: the rename then follows the fdatasync at once instead of after a round trip
 * through the event loop, which at 8 connections was a fifth of a delivery's time.
 *
 * A retired log file is not deleted but used again by the next log (see `FreeLog`): an fdatasync
 * after an append has to commit the file's new size and blocks as well (on ext4 with a journal, a
 * journal commit), while one after overwriting octets the file already has is a plain data flush.
 * Measured on the benchmark machine with 4.5 KB records: 550–690 µs against 285 µs per fdatasync on
 * ext4 with a journal, 215–300 against 145 without one. Retiring a file that is kept writes a new
 * owner record with a new generation over its first record and fdatasyncs it: from then on the older
 * records in it are never replayed (see logformat.ts), as they would not be from a deleted file.
 */

/** The log files' directory under the store root (a name mailbox encoding never produces). */
export const LOG_DIR = ".log";

/** Paths of the log files open in this process, whatever store instance owns them: never replayed. */
export const liveLogs = new Set<string>();

export interface DeliveryLogOptions {
  /** Messages up to this many octets go through the log; larger ones are fsynced as before. */
  readonly maxMessageBytes: number;
  /** How long a log collects records before it is retired (default 1 s). */
  readonly checkpointMs?: number;
  /** Octets of message bodies held in memory for the log at once, over all deliveries (default 32 MiB). */
  readonly budgetBytes?: number;
  /** A log file is retired early once it holds this much (default 64 MiB). */
  readonly maxLogBytes?: number;
  /** The file thread to write new logs with, if one runs (asked once per log file). */
  readonly thread?: () => FileThread | null;
  /** How long a retired log file may wait to be used again before it is deleted (default 60 s). */
  readonly reuseWithinMs?: number;
}

/** A record on its way: where it goes, and a promise for its durability (see `DeliveryLog.begin`). */
export interface Recording {
  /** The file thread that writes this record's log, or null where the thread pool does. */
  readonly thread: FileThread | null;
  /** The log file's path. */
  readonly log: string;
  /** The octet just past the record in that file: the log is durable up to here once it resolves. */
  readonly end: number;
  /** Resolves once the record is durable, to the release function `begin` describes. */
  readonly durable: Promise<() => void>;
}

/**
 * A retired log file kept for the next log: its first record is a durable owner record of generation
 * `gen`, which no record follows yet. The owner record keeps other processes' recovery away from it
 * while this process runs (a live owner's log is left alone); once the process is gone, a recovery
 * finds nothing to replay in it and deletes it.
 */
interface FreeLog {
  readonly path: string;
  readonly gen: string;
  /** Where the generation's first record goes: just past the owner record. */
  readonly start: number;
  /** When its owner record was written (Date.now()). */
  readonly at: number;
}

/**
 * A free log older than this is deleted rather than used again. A recovery in another pid namespace
 * (another container on this kernel) judges a log by its modification time and takes one untouched
 * for five minutes for abandoned: reusing only files written in the last minute keeps far from that.
 * Deleting them once idle also leaves nothing behind for other processes' recovery to look at.
 */
const REUSE_WITHIN_MS = 60_000;
/** More free logs than this are deleted: one or two are in use at a time. */
const MAX_FREE_LOGS = 4;

class Generation {
  fd: number | undefined;
  position: number;
  /** Octets ever queued: the end of the latest record, since the file is written in queue order. */
  total: number;
  queue: Uint8Array[] = [];
  queuedBytes = 0;
  /** Records appended whose files are not published (renamed into new/) or given up yet. */
  inflight = 0;
  failed = false;
  readonly files: string[] = [];
  readonly dirs = new Set<string>();
  /** The UIDs of the messages recorded here (whatever their mailbox), for `covers`. */
  readonly uids = new Set<string>();
  /** A target whose name did not parse: `covers` then answers yes for this log. */
  unnamed = false;
  private drainedWaiter: (() => void) | undefined;
  readonly commit: GroupCommit;
  /** With the file thread: the records waiting to be sent in the next append, and what they wait on. */
  batch: Batch | null = null;
  /** With the file thread: sends appends one after another, in the order of their positions. */
  chain: Promise<void> = Promise.resolve();
  /** With the file thread: whether the first append (which creates the file there) was sent. */
  created = false;
  /** With the file thread: the outcome of the latest append sent. */
  lastSent: Promise<void> = Promise.resolve();

  /**
   * `reused`: the file exists and holds this generation's owner record, durable, up to `start`; else
   * it is created with the first append, which begins with the owner record.
   */
  constructor(
    readonly path: string,
    readonly gen: string,
    readonly reused: boolean,
    start: number,
    readonly thread: FileThread | null,
    flush: (gen: Generation) => Promise<void>,
  ) {
    this.position = start;
    this.total = start;
    this.commit = new GroupCommit(() => flush(this));
  }

  /** Queues encoded record parts for the next flush. */
  enqueue(parts: readonly Uint8Array[]): void {
    for (const part of parts) {
      this.queue.push(part);
      this.queuedBytes += part.length;
      this.total += part.length;
    }
  }

  released(): void {
    this.inflight--;
    if (this.inflight === 0) this.drainedWaiter?.();
  }

  drained(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drainedWaiter = resolve));
  }
}

/** A message body gathered for the log, within the log's limits. */
export class KeptBody {
  chunks: Uint8Array[] = [];
  bytes = 0;
  private dropped = false;

  constructor(
    private readonly limit: number,
    private readonly budget: { reserve(n: number): boolean; unreserve(n: number): void },
  ) {}

  /** Whether `length` more octets stay within the log's size limit (the memory budget may still refuse). */
  fits(length: number): boolean {
    return !this.dropped && this.bytes + length <= this.limit;
  }

  /** Keeps `chunk` (which must not change afterwards); false if the message outgrew the log. */
  add(chunk: Uint8Array): boolean {
    if (!this.fits(chunk.length) || !this.budget.reserve(chunk.length)) return false;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    return true;
  }

  /** Lets go of the octets and their share of the budget (idempotent). */
  drop(): void {
    if (this.dropped) return;
    this.dropped = true;
    this.budget.unreserve(this.bytes);
    this.chunks = [];
    this.bytes = 0;
  }
}

export class DeliveryLog {
  readonly dir: string;
  private readonly nonce = randomBytes(6).toString("hex");
  private seq = 0;
  private current: Generation | null = null;
  private readonly sealed: Generation[] = [];
  private readonly retirements = new GroupCommit(() => this.retire());
  /** Retired files ready for the next log, the latest last (see FreeLog). */
  private free: FreeLog[] = [];
  /** Files to delete with the next retirement: free logs too old to use again. */
  private stale: string[] = [];
  private closing = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Deletes free logs once they are too old to use again (see `sweep`). */
  private sweeper: ReturnType<typeof setTimeout> | undefined;
  private readonly reuseWithinMs: number;
  private reserved = 0;
  private dirReady = false;
  private readonly checkpointMs: number;
  private readonly budgetBytes: number;
  private readonly maxLogBytes: number;

  constructor(
    private readonly root: string,
    private readonly policy: SyncPolicy,
    private readonly bulk: BulkSync,
    private readonly logger: Logger,
    private readonly options: DeliveryLogOptions,
  ) {
    this.dir = join(root, LOG_DIR);
    this.checkpointMs = options.checkpointMs ?? 1_000;
    this.budgetBytes = options.budgetBytes ?? 32 * 1024 * 1024;
    this.maxLogBytes = options.maxLogBytes ?? 64 * 1024 * 1024;
    this.reuseWithinMs = options.reuseWithinMs ?? REUSE_WITHIN_MS;
  }

  /** A collector for one delivery's body. */
  keeper(): KeptBody {
    return new KeptBody(this.options.maxMessageBytes, this);
  }

  reserve(n: number): boolean {
    if (this.reserved + n > this.budgetBytes) return false;
    this.reserved += n;
    return true;
  }

  unreserve(n: number): void {
    this.reserved -= n;
  }

  /**
   * Queues a record for a message written (not fsynced) to tmp/ that will be published under
   * `targets` (absolute paths under the root). `durable` resolves once the record is durable, to a
   * function that must be called once the files are published or the delivery gave up: the log is
   * only retired after that. The rest is what a caller needs to have the file thread rename the
   * message once the record is durable (`FileThread.publish`).
   */
  begin(targets: readonly string[], mtimeMs: number, body: readonly Uint8Array[]): Recording {
    const gen = (this.current ??= this.open());
    gen.enqueue(encodeRecord({ kind: "delivery", targets: targets.map((t) => this.relative(t)), mtimeMs, gen: gen.gen }, body));
    gen.inflight++;
    for (const target of targets) {
      gen.files.push(target);
      gen.dirs.add(dirname(target));
      const parsed = parseName(basename(target));
      if (parsed === null) gen.unnamed = true;
      else gen.uids.add(uidOfBase(parsed.base));
    }
    let done = false;
    const release = (): void => {
      if (done) return;
      done = true;
      gen.released();
    };
    const end = gen.total;
    if (gen.position + gen.queuedBytes > this.maxLogBytes) {
      // Sealed at once, so the file stops growing even while a retirement is still running.
      this.sealed.push(gen);
      this.current = null;
      this.checkpoint().catch(() => undefined);
    }
    const durable = (gen.thread !== null ? this.pipelined(gen) : gen.commit.sync()).then(
      () => release,
      (error: unknown) => {
        release();
        throw error;
      },
    );
    return { thread: gen.thread, log: gen.path, end, durable };
  }

  /**
   * True if a log not retired yet holds a record of a message with one of these UIDs (in any mailbox:
   * a UID another mailbox also has only costs an unneeded checkpoint). An expunge needs a checkpoint
   * only then: a message it removes whose record was retired already is durable in its Maildir and
   * in no log that a replay could bring it back from. Under load nearly every expunge found *some*
   * log pending, and waiting for its retirement made POP3 QUITs with deletions slow.
   */
  covers(uids: Iterable<string>): boolean {
    const gens = this.current === null ? this.sealed : [...this.sealed, this.current];
    if (gens.length === 0) return false;
    if (gens.some((gen) => gen.unnamed)) return true;
    for (const uid of uids) if (gens.some((gen) => gen.uids.has(uid))) return true;
    return false;
  }

  /**
   * Makes every file recorded so far durable in its Maildir and retires the logs that covered them
   * (nothing in them can be replayed any more).
   * An expunge that removes a message still recorded in a log (see `covers`) calls this first, so
   * that a replay after a power cut cannot bring back mail a client deleted.
   */
  checkpoint(): Promise<void> {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    return this.retirements.sync();
  }

  /**
   * One retirement: the log being written is sealed now, when the retirement starts (every record
   * queued before the checkpoint that asked for it is in that log or an older one), and every sealed
   * log is retired together. Checkpoints asked for while one runs share the next (see GroupCommit):
   * every POP3 QUIT with deletions asks for one, and under load, retiring a fresh small log for each,
   * one after another, had QUITs wait 20 s and more.
   */
  private async retire(): Promise<void> {
    if (this.current !== null) {
      this.sealed.push(this.current);
      this.current = null;
    }
    const gens = this.sealed.slice();
    if (gens.length === 0 && this.stale.length === 0) return;
    await Promise.all(gens.map((gen) => gen.drained()));
    const files = gens.flatMap((gen) => gen.files);
    const dirs = new Set(gens.flatMap((gen) => [...gen.dirs]));
    await this.bulk.sync(files, dirs);
    const stale = this.stale.splice(0);
    const removing = [...stale];
    const kept: FreeLog[] = [];
    for (const gen of gens) {
      // The thread closes the logs it opened (and forgets the others' failures).
      if (gen.thread !== null) await gen.thread.forget(gen.path).catch(() => undefined);
      const fd = gen.fd;
      gen.fd = undefined;
      if (fd !== undefined) await closeFd(fd).catch(() => undefined);
      if (fd === undefined && !gen.created && !gen.reused) {
        // Never written: there is no file.
        liveLogs.delete(gen.path);
        continue;
      }
      // Either way the records in it can no longer be replayed once this is done: the file is gone,
      // or its first record names a generation none of them belongs to.
      const free = this.closing || gen.failed ? null : await this.renew(gen.path);
      if (free !== null) kept.push(free);
      else removing.push(gen.path);
    }
    try {
      await this.remove(removing);
    } catch (error) {
      // Tried again with the next retirement; until then the logs count as not retired (`covers`).
      this.stale.unshift(...stale);
      throw error;
    }
    this.sealed.splice(0, gens.length);
    this.free.push(...kept);
    while (this.free.length > MAX_FREE_LOGS) this.stale.push(this.free.shift()!.path);
    if (this.free.length > 0) this.scheduleSweep();
  }

  private scheduleSweep(): void {
    if (this.sweeper !== undefined || this.closing) return;
    const oldest = Math.min(...this.free.map((free) => free.at));
    this.sweeper = setTimeout(() => {
      this.sweeper = undefined;
      this.sweep();
    }, Math.max(0, oldest + this.reuseWithinMs - Date.now()) + 50);
    // Like the checkpoint timer: never what keeps a finished process alive.
    (this.sweeper as { unref?: () => void }).unref?.();
  }

  /** Moves the free logs too old to use again to `stale`, and has a retirement delete them. */
  private sweep(): void {
    const expired = this.dropFree((free) => !this.young(free));
    if (this.free.length > 0) this.scheduleSweep();
    if (expired === 0) return;
    this.checkpoint().catch((error: unknown) => {
      this.logger.warn({ err: error }, "maildir: could not delete unused delivery log files; the next retirement tries again");
    });
  }

  /** Deletes log files, durably: a log that came back after a power cut would restore mail deleted since. */
  private async remove(paths: readonly string[]): Promise<void> {
    if (paths.length === 0) return;
    for (const path of paths) await unlinkQuiet(path);
    await fsyncDir(this.dir, this.policy);
    for (const path of paths) liveLogs.delete(path);
  }

  /**
   * Makes a retired log file ready for the next log: a new generation's owner record over its first
   * record, fdatasynced. Null if that failed (the file is deleted instead).
   */
  private async renew(path: string): Promise<FreeLog | null> {
    const gen = newGeneration();
    const parts = encodeRecord(ownerRecord(gen), []);
    let bytes = 0;
    for (const part of parts) bytes += part.length;
    let fd: number | undefined;
    try {
      fd = await openExisting(path);
      if ((await writevAt(fd, parts, 0)) !== bytes) return null;
      await fdatasyncFd(fd);
      return { path, gen, start: bytes, at: Date.now() };
    } catch (error) {
      this.logger.warn({ err: error, log: path }, "maildir: could not reuse a delivery log file; deleting it");
      return null;
    } finally {
      if (fd !== undefined) await closeFd(fd).catch(() => undefined);
    }
  }

  /** Retires everything and deletes the log files (store close). */
  async close(): Promise<void> {
    this.closing = true;
    if (this.sweeper !== undefined) {
      clearTimeout(this.sweeper);
      this.sweeper = undefined;
    }
    await this.checkpoint();
    const paths = [...this.free.map((free) => free.path), ...this.stale];
    this.free = [];
    this.stale = [];
    await this.remove(paths);
  }

  private relative(target: string): string {
    return target.slice(this.root.length + sep.length);
  }

  private open(): Generation {
    const thread = this.options.thread?.() ?? null;
    const flush = (g: Generation): Promise<void> => this.flush(g);
    this.schedule();
    const free = this.takeFree();
    if (free !== null) return new Generation(free.path, free.gen, true, free.start, thread, flush);
    const path = join(this.dir, `${this.nonce}-${this.seq++}.log`);
    liveLogs.add(path);
    const gen = new Generation(path, newGeneration(), false, 0, thread, flush);
    gen.enqueue(encodeRecord(ownerRecord(gen.gen), []));
    return gen;
  }

  /** The latest free log young enough to use again; older ones are deleted with the next retirement. */
  private takeFree(): FreeLog | null {
    const latest = this.free.at(-1);
    if (latest !== undefined && !this.closing && this.young(latest)) return this.free.pop()!;
    // The rest are older still.
    this.dropFree(() => true);
    return null;
  }

  private young(free: FreeLog): boolean {
    return Date.now() - free.at < this.reuseWithinMs;
  }

  /** Moves the free logs `which` picks to `stale` (deleted with the next retirement); returns how many. */
  private dropFree(which: (free: FreeLog) => boolean): number {
    const dropped = this.free.filter(which);
    this.free = this.free.filter((free) => !which(free));
    this.stale.push(...dropped.map((free) => free.path));
    return dropped.length;
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.checkpoint().catch((error: unknown) => {
        this.logger.error({ err: error }, "maildir: could not retire the delivery log; retrying");
        this.schedule();
      });
    }, this.checkpointMs);
    // A pending checkpoint must not keep an otherwise finished process alive; close() runs it.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /**
   * Without the file thread: opens the log file the first time, and makes its directory entry
   * durable before any record counts (the thread does the same itself with its first append).
   */
  private async prepare(gen: Generation): Promise<number> {
    await this.usable(gen);
    if (gen.fd === undefined && gen.reused) gen.fd = await openExisting(gen.path);
    if (gen.fd === undefined) {
      gen.fd = await openNew(gen.path, 0o600);
      await fsyncDir(this.dir, this.policy);
    }
    return gen.fd;
  }

  /** Fails for a log that failed before; makes sure the logs' directory exists. */
  private async usable(gen: Generation): Promise<void> {
    if (gen.failed) throw new Error(`maildir: delivery log ${gen.path} failed earlier`);
    if (!this.dirReady) {
      await makeDirs(this.dir, this.policy);
      this.dirReady = true;
    }
  }

  /**
   * After a failed write or fdatasync nothing more is trusted to this file: later records go to a new
   * one, and this one is retired (its earlier, durable records still count).
   */
  private fail(gen: Generation): void {
    gen.failed = true;
    // Whatever went wrong may have been the directory itself: the next log file checks it again, and
    // is a new one (the files kept for reuse may be gone with it; they are deleted if not).
    this.dirReady = false;
    this.dropFree(() => true);
    // Publishes waiting in the thread for an append that will never come must fail, not wait.
    gen.thread?.abandon(gen.path).catch(() => undefined);
    if (this.current === gen) {
      this.sealed.push(gen);
      this.current = null;
    }
  }

  /** The thread pool's flush, one at a time per log file (see GroupCommit). */
  private async flush(gen: Generation): Promise<void> {
    try {
      const fd = await this.prepare(gen);
      const parts = gen.queue;
      const bytes = gen.queuedBytes;
      gen.queue = [];
      gen.queuedBytes = 0;
      if (bytes > 0) {
        const written = await writevAt(fd, parts, gen.position);
        if (written !== bytes) throw new Error(`maildir: short write to the delivery log ${gen.path} (${written} of ${bytes})`);
        gen.position += bytes;
      }
      await fdatasyncFd(fd);
    } catch (error) {
      this.fail(gen);
      throw error;
    }
  }

  /**
   * With the file thread, appends do not wait for each other: the thread makes them in the order they
   * were sent and refuses every one after a failed one, so a later record can never be durable behind
   * a hole. The records queued while an append is under way go in the next one at once; the thread
   * lets the appends it finds together share one fdatasync.
   */
  private pipelined(gen: Generation): Promise<void> {
    let batch = gen.batch;
    if (batch === null) {
      const mine = (batch = gen.batch = newBatch());
      gen.chain = gen.chain.then(() => this.send(gen, mine));
    }
    return batch.promise;
  }

  private async send(gen: Generation, batch: Batch): Promise<void> {
    try {
      await this.usable(gen);
      // Taken together with the queue: records queued from now on wait for the next append.
      if (gen.batch === batch) gen.batch = null;
      const parts = gen.queue;
      const bytes = gen.queuedBytes;
      gen.queue = [];
      gen.queuedBytes = 0;
      if (bytes > 0) {
        const create = gen.created ? null : { dir: this.dir, unsyncable: UNSYNCABLE, reuse: gen.reused };
        gen.created = true;
        gen.lastSent = gen.thread!.append(gen.path, create, gen.position, parts);
        gen.position += bytes;
      }
      // Nothing queued: an append already sent carries these records.
      gen.lastSent.then(batch.resolve, (error: unknown) => {
        this.fail(gen);
        batch.reject(error);
      });
    } catch (error) {
      if (gen.batch === batch) gen.batch = null;
      this.fail(gen);
      batch.reject(error);
    }
  }
}

/**
 * The first record of every log: who writes it, precisely enough for recovery to tell if it still runs,
 * and the generation whose records follow it.
 */
function ownerRecord(gen: string): LogOwner {
  const stamp = processStamp();
  return {
    kind: "owner",
    pid: process.pid,
    boot: currentBootId(),
    started: Date.now(),
    ...(stamp ? { pidns: stamp.pidns, start: stamp.start } : {}),
    gen,
  };
}

/** Random, so that no two uses of any file share one, whichever process wrote them. */
function newGeneration(): string {
  return randomBytes(8).toString("hex");
}
