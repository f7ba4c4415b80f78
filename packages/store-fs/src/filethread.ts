import { Buffer } from "node:buffer";
import { setImmediate } from "node:timers";
import { Worker } from "node:worker_threads";

/**
 * A helper thread for the file calls of small deliveries: create, write, stamp and close the tmp/
 * file, append the delivery log's records and flush it, and rename the file into new/ once its record
 * is durable (see deliverylog.ts for the order these calls keep).
 *
 * Each asynchronous file call is a hand-off to libuv's thread pool: the event loop wakes a pool
 * thread, and the pool thread wakes the event loop when it is done. On the benchmark VM each such
 * round trip cost the event loop 35–55 µs, more than the call itself, and a small delivery made five
 * of them. This thread makes the same calls synchronously, and the hand-offs of concurrent
 * deliveries share their wake-ups in both directions (the thread answers everything it did in one
 * drain with one message). The calls, their order and the crash guarantees are the ones the thread
 * pool path has: only where they run changes.
 *
 * One thread per process, started by the first small delivery (which, like any delivery while the
 * thread starts, still uses the thread pool). It never keeps a process alive on its own: it is
 * referenced only while a call is outstanding. Where a runtime cannot start it, the thread pool is
 * all there is; should it stop later, the calls it had not answered fail (their deliveries are
 * refused with a temporary error, nothing was acknowledged) and later ones use the thread pool.
 */

// Plain JavaScript for an eval worker: the package ships no second entry file, and the same text runs
// on Node, Bun and Deno, from the built package or from the TypeScript sources. Dynamic imports
// because the text is evaluated as CommonJS or as a module depending on the parent's flags.
const THREAD_SOURCE = `
Promise.all([import("node:worker_threads"), import("node:fs")]).then(([{ parentPort, receiveMessageOnPort }, fs]) => {
  let answers = [];
  const settle = (id, failure) => answers.push(id, failure);
  const describe = (error) => ({ message: String(error && error.message), code: error && error.code, errno: error && error.errno, syscall: error && error.syscall, path: error && error.path });
  // tmp/ files whose write failed: a publish of one of them must fail, whatever is left on disk.
  const failedWrites = new Set();
  // Per delivery log: its descriptor (opened here: a descriptor is not shared between threads on
  // every runtime), how far it is durable, and whether an append to it failed (nothing after a failed
  // append is trusted, so its later publishes fail too).
  const logFds = new Map();
  const synced = new Map();
  const failedLogs = new Set();
  const openLog = (job) => {
    let fd = logFds.get(job.log);
    if (fd !== undefined) return fd;
    if (job.create === null) throw new Error("maildir: the delivery log is not open");
    fd = fs.openSync(job.log, job.create.reuse ? "r+" : "wx", 0o600);
    logFds.set(job.log, fd);
    // A retired file used again: it exists, and so does its durable directory entry.
    if (job.create.reuse) return fd;
    // Its directory entry must be durable before any of its records counts.
    let dir;
    try {
      dir = fs.openSync(job.create.dir, "r");
      fs.fsyncSync(dir);
    } catch (error) {
      if (!job.create.unsyncable.includes(error && error.code)) throw error;
    } finally {
      if (dir !== undefined) fs.closeSync(dir);
    }
    return fd;
  };
  // Publishes waiting for the append that makes their record durable.
  let held = [];
  const writeNew = (path, data, mtimeMs, mode) => {
    const fd = fs.openSync(path, "wx", mode);
    try {
      try {
        let at = 0;
        while (at < data.length) at += fs.writeSync(fd, data, at, data.length - at);
        const when = mtimeMs / 1000;
        fs.futimesSync(fd, when, when);
      } finally {
        fs.closeSync(fd);
      }
    } catch (error) {
      try { fs.unlinkSync(path); } catch {}
      throw error;
    }
  };
  const LOG_FAILED = { message: "maildir: the delivery log failed" };
  const publish = (job) => {
    if (failedWrites.delete(job.from)) throw new Error("maildir: the message file was not written");
    fs.renameSync(job.from, job.to);
  };
  const releaseHeld = (log) => {
    const failed = failedLogs.has(log);
    const end = synced.get(log) ?? 0;
    const waiting = [];
    for (const job of held) {
      if (job.log !== log) waiting.push(job);
      else if (failed) {
        failedWrites.delete(job.from);
        settle(job.id, LOG_FAILED);
      }
      else if (job.end <= end) {
        let outcome = null;
        try { publish(job); } catch (error) { outcome = describe(error); }
        settle(job.id, outcome);
      } else waiting.push(job);
    }
    held = waiting;
  };
  // The appends of one message are written in order, then each log they touched is fdatasynced
  // once: the main thread sends a turn's records as they come, and they share the flush here.
  const appendAll = (appends) => {
    const written = new Map();
    for (const job of appends) {
      if (failedLogs.has(job.log)) { settle(job.id, LOG_FAILED); continue; }
      try {
        const fd = openLog(job);
        const data = job.data;
        let at = 0;
        while (at < data.length) at += fs.writeSync(fd, data, at, data.length - at, job.position + at);
      } catch (error) {
        failedLogs.add(job.log);
        settle(job.id, describe(error));
        continue;
      }
      if (!written.has(job.log)) written.set(job.log, []);
      written.get(job.log).push(job);
    }
    for (const [log, jobs] of written) {
      let failure = failedLogs.has(log) ? LOG_FAILED : null;
      if (failure === null) {
        try { fs.fdatasyncSync(logFds.get(log)); } catch (error) { failure = describe(error); failedLogs.add(log); }
      }
      if (failure === null) synced.set(log, jobs[jobs.length - 1].position + jobs[jobs.length - 1].data.length);
      for (const job of jobs) settle(job.id, failure);
    }
    for (const log of new Set(appends.map((job) => job.log))) releaseHeld(log);
  };
  // What the main thread sent while the thread was busy (its fdatasyncs above all) is taken in one go,
  // so that its appends share the next fdatasync instead of one each. Where a runtime cannot do this,
  // the messages are simply handled one by one.
  const waiting = () => {
    const jobs = [];
    try {
      for (let next = receiveMessageOnPort(parentPort); next !== undefined; next = receiveMessageOnPort(parentPort)) jobs.push(...next.message);
    } catch {}
    return jobs;
  };
  parentPort.on("message", (first) => {
    const appends = [];
    const jobs = first.concat(waiting());
    for (const job of jobs) {
      // Octets come as the ArrayBuffer itself (see Job).
      if (job.data !== undefined) job.data = new Uint8Array(job.data);
      if (job.op === "append") { appends.push(job); continue; }
      if (job.op === "publish") {
        if (failedLogs.has(job.log)) {
          failedWrites.delete(job.from);
          settle(job.id, LOG_FAILED);
          continue;
        }
        if ((synced.get(job.log) ?? 0) < job.end) { held.push(job); continue; }
      }
      let failure = null;
      try {
        if (job.op === "write") writeNew(job.path, job.data, job.mtimeMs, job.mode);
        else if (job.op === "rename") fs.renameSync(job.from, job.to);
        else if (job.op === "publish") publish(job);
        else if (job.op === "abandon") failedLogs.add(job.log);
        else if (job.op === "forget") {
          const fd = logFds.get(job.log);
          logFds.delete(job.log);
          if (fd !== undefined) fs.closeSync(fd);
          synced.delete(job.log);
          failedLogs.delete(job.log);
        }
      } catch (error) {
        failure = describe(error);
        if (job.op === "write" && job.gated) failedWrites.add(job.path);
      }
      settle(job.id, failure);
      if (job.op === "abandon") releaseHeld(job.log);
    }
    if (appends.length > 0) appendAll(appends);
    // Everything handled here is answered together, at once: a later message must not hold it up.
    if (answers.length > 0) {
      const out = answers;
      answers = [];
      parentPort.postMessage(out);
    }
  });
  parentPort.postMessage("ready");
});
`;

/**
 * `data` is an ArrayBuffer, not a view of one: Deno's worker_threads looks for MessagePorts in every
 * message by walking it property by property, which for a Uint8Array means every index (4 % of the
 * process's CPU at 4 KB messages), while an ArrayBuffer has no properties to walk. It is transferred,
 * not copied.
 */
type Job =
  | { readonly id: number; readonly op: "write"; readonly path: string; readonly data: ArrayBuffer; readonly mtimeMs: number; readonly gated: boolean; readonly mode: number }
  | { readonly id: number; readonly op: "rename"; readonly from: string; readonly to: string }
  | { readonly id: number; readonly op: "publish"; readonly from: string; readonly to: string; readonly log: string; readonly end: number }
  | { readonly id: number; readonly op: "append"; readonly log: string; readonly create: LogCreation | null; readonly position: number; readonly data: ArrayBuffer }
  | { readonly id: number; readonly op: "abandon"; readonly log: string }
  | { readonly id: number; readonly op: "forget"; readonly log: string };

/** How the thread creates (or opens) a log file with its first append. */
export interface LogCreation {
  /** The log's directory, fsynced once the file exists. */
  readonly dir: string;
  /** Error codes of a directory fsync the platform cannot do, which are not failures. */
  readonly unsyncable: readonly string[];
  /** The file exists already (a retired log used again): opened for writing, not created. */
  readonly reuse?: boolean;
}

interface Failure {
  readonly message: string;
  readonly code?: string;
  readonly errno?: number;
  readonly syscall?: string;
  readonly path?: string;
}

interface Waiter {
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/**
 * One copy of our own, handed over rather than cloned: the chunks may be views into larger buffers
 * (which a clone would copy whole) and stay in use meanwhile. Not zero-filled first (every octet is
 * written right after): for a 100 KB message, clearing the two buffers it needs took a sixth of the
 * event loop's time.
 */
function joined(chunks: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  let length = 0;
  for (const chunk of chunks) length += chunk.length;
  // It must have an ArrayBuffer of its own of exactly this length to be transferred: where a runtime's
  // allocUnsafeSlow gives anything else (a slice of a pool), a zero-filled array it is.
  const unsafe = Buffer.allocUnsafeSlow(length);
  const data = unsafe.byteOffset === 0 && unsafe.buffer.byteLength === length ? new Uint8Array(unsafe.buffer) : new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return data;
}

/** A system error rebuilt from the thread's answer, so callers map its errno as for any file call. */
function rebuild(failure: Failure): Error {
  const error: NodeJS.ErrnoException = new Error(failure.message);
  if (failure.code !== undefined) error.code = failure.code;
  if (failure.errno !== undefined) error.errno = failure.errno;
  if (failure.syscall !== undefined) error.syscall = failure.syscall;
  if (failure.path !== undefined) error.path = failure.path;
  return error;
}

export class FileThread {
  readonly #worker: Worker;
  readonly #waiting = new Map<number, Waiter>();
  #nextId = 1;
  #stopped = false;
  #outbox: Job[] = [];
  #transfer: ArrayBuffer[] = [];

  private constructor(ready: (thread: FileThread | null) => void) {
    this.#worker = new Worker(THREAD_SOURCE, { eval: true });
    this.#worker.on("message", (answers: "ready" | readonly unknown[]) => {
      if (answers === "ready") ready(this);
      else this.#settle(answers);
    });
    this.#worker.on("error", (error) => {
      ready(null);
      this.#stop(error);
    });
    this.#worker.on("exit", (code) => {
      ready(null);
      this.#stop(new Error(`maildir file thread exited with code ${code}`));
    });
    // After the listeners: adding a "message" listener references the worker again.
    this.#worker.unref();
  }

  /**
   * Creates `path` (failing if it exists), writes `chunks`, sets its modification time and closes it.
   * `gated`: a `publish` of `path` follows, which must fail if this write did.
   */
  writeNew(path: string, chunks: readonly Uint8Array[], mtimeMs: number, gated = false, mode = 0o600): Promise<void> {
    const data = joined(chunks);
    return this.#post((id) => ({ id, op: "write", path, data: data.buffer, mtimeMs, gated, mode }), data.buffer);
  }

  rename(from: string, to: string): Promise<void> {
    return this.#post((id) => ({ id, op: "rename", from, to }));
  }

  /**
   * Renames `from` to `to` once the delivery log `log` is durable up to octet `end` (the end of the
   * message's record), as an `append` sent to this thread before or after makes it. Fails, renaming
   * nothing, if an append to that log fails first or the thread's write of `from` failed. Waiting in
   * the thread rather than here saves the delivery a round trip between the commit and the rename.
   */
  publish(from: string, to: string, log: string, end: number): Promise<void> {
    return this.#post((id) => ({ id, op: "publish", from, to, log, end }));
  }

  /**
   * Writes `parts` at `position` of the log file `log` and fdatasyncs it. The first append to a log
   * passes `create`: the thread then creates the file (failing if it exists) and fsyncs its directory,
   * or with `create.reuse` opens the file that is there.
   */
  append(log: string, create: LogCreation | null, position: number, parts: readonly Uint8Array[]): Promise<void> {
    const data = joined(parts);
    return this.#post((id) => ({ id, op: "append", log, create, position, data: data.buffer }), data.buffer);
  }

  /** Marks a log failed although no append to it failed here: its waiting and later publishes fail. */
  abandon(log: string): Promise<void> {
    return this.#post((id) => ({ id, op: "abandon", log }));
  }

  /** Closes a retired log and drops what the thread remembers about it. */
  forget(log: string): Promise<void> {
    return this.#post((id) => ({ id, op: "forget", log }));
  }

  /** Stops the thread: calls not answered yet fail, and the process goes on without one. */
  close(): void {
    this.#stop(new Error("closed"));
  }

  #post(job: (id: number) => Job, transfer?: ArrayBuffer): Promise<void> {
    const id = this.#nextId++;
    return new Promise<void>((resolve, reject) => {
      if (this.#stopped) {
        reject(new Error("maildir file thread stopped"));
        return;
      }
      if (this.#waiting.size === 0) this.#worker.ref();
      this.#waiting.set(id, { resolve, reject });
      this.#outbox.push(job(id));
      if (transfer !== undefined) this.#transfer.push(transfer);
      if (this.#outbox.length === 1) setImmediate(this.#send);
    });
  }

  // Each message wakes the thread, and a wake-up cost about as much as the hand-off it replaces: the
  // jobs of one turn of the event loop (the sessions whose input arrived together) go in one message.
  readonly #send = (): void => {
    if (this.#stopped || this.#outbox.length === 0) return;
    const jobs = this.#outbox;
    const transfer = this.#transfer;
    this.#outbox = [];
    this.#transfer = [];
    this.#worker.postMessage(jobs, transfer);
  };

  #settle(answers: readonly unknown[]): void {
    for (let i = 0; i < answers.length; i += 2) {
      const waiter = this.#waiting.get(answers[i] as number);
      if (waiter === undefined) continue;
      this.#waiting.delete(answers[i] as number);
      const failure = answers[i + 1] as Failure | null;
      if (failure === null) waiter.resolve();
      else waiter.reject(rebuild(failure));
    }
    if (this.#waiting.size === 0) this.#worker.unref();
  }

  #stop(error: unknown): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (shared === this) shared = null;
    const cause = error instanceof Error ? error.message : String(error);
    for (const waiter of this.#waiting.values()) waiter.reject(new Error(`maildir file thread stopped: ${cause}`));
    this.#waiting.clear();
    this.#outbox = [];
    this.#transfer = [];
    void this.#worker.terminate().catch(() => undefined);
  }

  /**
   * The process's thread once it runs, else null (the caller then uses the thread pool). The first
   * call starts it, in the background; calls are only sent to a thread that has shown it runs, so a
   * runtime that cannot start one costs nothing but the attempt. Once a thread stopped, no new one
   * is started.
   */
  static shared(): FileThread | null {
    FileThread.#launch();
    return shared;
  }

  /** Starts the process's thread if need be, and resolves once it runs (null: it cannot). */
  static async start(): Promise<FileThread | null> {
    const { thread, ready } = FileThread.#launch();
    // Whoever waits for the start keeps the process alive meanwhile; a background start does not.
    if (thread !== null) thread.#worker.ref();
    const running = await ready;
    if (thread !== null && thread.#waiting.size === 0) thread.#worker.unref();
    return running;
  }

  static #launch(): Launch {
    if (launch !== undefined) return launch;
    let settle!: (thread: FileThread | null) => void;
    const ready = new Promise<FileThread | null>((resolve) => (settle = resolve));
    const done = (thread: FileThread | null): void => {
      if (thread !== null && !thread.#stopped && shared === null) shared = thread;
      settle(shared);
    };
    let thread: FileThread | null = null;
    try {
      thread = new FileThread(done);
    } catch {
      settle(null);
    }
    launch = { thread, ready };
    return launch;
  }
}

interface Launch {
  readonly thread: FileThread | null;
  readonly ready: Promise<FileThread | null>;
}

let shared: FileThread | null = null;
let launch: Launch | undefined;
