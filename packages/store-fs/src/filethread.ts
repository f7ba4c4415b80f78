import { setImmediate } from "node:timers";
import { Worker } from "node:worker_threads";

/**
 * A helper thread for the file calls of small deliveries: create, write, stamp and close the tmp/
 * file, and later rename it into new/.
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
Promise.all([import("node:worker_threads"), import("node:fs")]).then(([{ parentPort }, fs]) => {
  let answers = [];
  let answering = false;
  const answer = () => {
    answering = false;
    const out = answers;
    answers = [];
    parentPort.postMessage(out);
  };
  const writeNew = (path, data, mtimeMs) => {
    const fd = fs.openSync(path, "wx", 0o666);
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
  parentPort.on("message", (jobs) => {
    for (const job of jobs) {
      let failure = null;
      try {
        if (job.op === "write") writeNew(job.path, job.data, job.mtimeMs);
        else fs.renameSync(job.from, job.to);
      } catch (error) {
        failure = { message: String(error && error.message), code: error && error.code, errno: error && error.errno, syscall: error && error.syscall, path: error && error.path };
      }
      answers.push(job.id, failure);
    }
    // Everything that arrived in this drain is answered together, after it.
    if (!answering) { answering = true; setImmediate(answer); }
  });
  parentPort.postMessage("ready");
});
`;

type Job =
  | { readonly id: number; readonly op: "write"; readonly path: string; readonly data: Uint8Array; readonly mtimeMs: number }
  | { readonly id: number; readonly op: "rename"; readonly from: string; readonly to: string };

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

  /** Creates `path` (failing if it exists), writes `chunks`, sets its modification time and closes it. */
  writeNew(path: string, chunks: readonly Uint8Array[], mtimeMs: number): Promise<void> {
    // One copy of our own, handed over rather than cloned: the chunks may be views into larger
    // buffers (which a clone would copy whole) and stay in use by the delivery log meanwhile.
    let length = 0;
    for (const chunk of chunks) length += chunk.length;
    const data = new Uint8Array(length);
    let at = 0;
    for (const chunk of chunks) {
      data.set(chunk, at);
      at += chunk.length;
    }
    return this.#post((id) => ({ id, op: "write", path, data, mtimeMs }), data.buffer);
  }

  rename(from: string, to: string): Promise<void> {
    return this.#post((id) => ({ id, op: "rename", from, to }));
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
