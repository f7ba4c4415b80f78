import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { mapLimited } from "./concurrency.js";
import { closeFd, fsyncFd, openReadOnly } from "./fdio.js";
import { isErrno } from "./errors.js";
import { parseName } from "./filenames.js";
import { UNSYNCABLE } from "./fsutil.js";

/**
 * Makes files written without fsync durable after the fact, in bulk. No JavaScript runtime exposes
 * syncfs(2), so the first choice is coreutils' `sync -f` (one syncfs per file system named), which
 * writes back a second's worth of deliveries in one go: on the benchmark machine 2,000 fresh 4 KB
 * files took 24 ms that way against 420 ms of one fsync each. Where `sync -f` is missing or refused
 * (BusyBox without -f, macOS, a Deno without --allow-run), every file and directory is fsynced
 * instead, off the delivery path either way.
 *
 * `sync -f` runs under one long-lived shell per store (see SyncHelper), not as a child of the server
 * each time: forking the server itself stopped its event loop for 12–26 ms at every retirement (the
 * spawn waits for the child to exec, on two busy cores), and every page the server wrote afterwards
 * took a fault of its own, the fork having marked them all copy-on-write. On the benchmark machine the
 * shell took the server's page faults per 4 KB delivery from 2.5 to 1.0 and its CPU per message down
 * by a seventh at 8 connections and a quarter at 64.
 */
export class BulkSync {
  private syncfsWorks: boolean;
  private helper: SyncHelper | null = null;
  private closed = false;

  constructor(
    private readonly warn: (message: string) => void,
    options: { readonly syncfs?: boolean } = {},
  ) {
    this.syncfsWorks = options.syncfs ?? process.platform === "linux";
  }

  /**
   * `files` must be durable, and so must the entries of `dirs` (syncfs covers every file system that
   * one of `dirs` is on). Files that are gone meanwhile (a reader moved or expunged them) are skipped:
   * whoever removed them made that change durable themselves.
   */
  async sync(files: readonly string[], dirs: Iterable<string>): Promise<void> {
    const dirList = [...dirs];
    if (this.syncfsWorks) {
      const fileSystems = onePerFileSystem(dirList);
      if (fileSystems.length > 0) {
        try {
          await Promise.all(fileSystems.map((path) => this.syncF(path)));
          return;
        } catch (error) {
          this.syncfsWorks = false;
          this.warn(`maildir: \`sync -f\` failed (${String(error)}); making delivered files durable one fsync at a time from now on`);
        }
      }
    }
    await mapLimited(files, 16, (path) => fsyncPath(path, false));
    await mapLimited(dirList, 16, (path) => fsyncPath(path, true));
  }

  /** Ends the helper shell; a later sync starts another. */
  close(): void {
    this.closed = true;
    this.helper?.stop();
    this.helper = null;
  }

  private syncF(path: string): Promise<void> {
    // A line per path is the helper's protocol; a path with a line break in it (which no sane store
    // root has) gets a `sync -f` of its own.
    if (path.includes("\n") || this.closed) return runSyncF(path);
    if (this.helper === null || this.helper.stopped) this.helper = new SyncHelper();
    return this.helper.sync(path);
  }
}

/** Longest a `sync -f` may take before it counts as failed (a disk that stopped answering). */
const SYNC_TIMEOUT_MS = 120_000;

/**
 * Reads a path per line and answers `ok` or `failed <why>` once `sync -f` over it is done. It ends by
 * itself when the server goes, however it goes: its input is a pipe from the server. The leading `:`
 * does nothing but name it in `ps`.
 */
const HELPER_SCRIPT = `: mailroom store-fs sync helper; while IFS= read -r p; do
  if out=$(sync -f -- "$p" 2>&1); then echo ok; else printf 'failed %s\\n' "$(printf '%s' "$out" | tr '\\n' ' ')"; fi
done`;

/** One `sh` running HELPER_SCRIPT; requests are answered in the order they were sent. */
class SyncHelper {
  stopped = false;
  private readonly child: ChildProcess;
  private readonly pending: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private output = "";
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor() {
    // Throws at once where spawning is not permitted; the caller's fallback takes over.
    this.child = spawn("sh", ["-c", HELPER_SCRIPT], { stdio: ["pipe", "pipe", "ignore"] });
    this.child.on("error", (error) => this.fail(error));
    this.child.on("exit", (code, signal) => this.fail(new Error(`the sync helper exited (${signal ?? code})`)));
    this.child.stdin?.on("error", (error) => this.fail(error));
    this.child.stdout?.setEncoding("utf8");
    this.child.stdout?.on("data", (text: string) => this.read(text));
    this.idle();
  }

  sync(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.stopped) {
        reject(new Error("the sync helper stopped"));
        return;
      }
      this.pending.push({ resolve, reject });
      if (this.pending.length === 1) this.busy();
      this.child.stdin?.write(`${path}\n`);
    });
  }

  stop(): void {
    this.fail(new Error("the sync helper was stopped"));
  }

  private read(text: string): void {
    this.output += text;
    for (let end = this.output.indexOf("\n"); end >= 0; end = this.output.indexOf("\n")) {
      const line = this.output.slice(0, end);
      this.output = this.output.slice(end + 1);
      const waiter = this.pending.shift();
      if (waiter === undefined) continue;
      if (line === "ok") waiter.resolve();
      else waiter.reject(new Error(`sync -f: ${line.replace(/^failed /, "").trim() || "failed"}`));
      if (this.pending.length === 0) this.idle();
      else this.arm();
    }
  }

  /** Waits keep the process alive, and each has a time limit; an idle helper holds nothing. */
  private busy(): void {
    this.child.ref();
    (this.child.stdout as { ref?: () => void } | null)?.ref?.();
    this.arm();
  }

  private idle(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.child.unref();
    (this.child.stdout as { unref?: () => void } | null)?.unref?.();
    (this.child.stdin as { unref?: () => void } | null)?.unref?.();
  }

  private arm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fail(new Error(`sync -f took over ${SYNC_TIMEOUT_MS / 1000} s`)), SYNC_TIMEOUT_MS);
  }

  private fail(error: Error): void {
    if (!this.stopped) {
      this.stopped = true;
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.timer = undefined;
      this.child.stdin?.destroy();
      this.child.stdout?.destroy();
      if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
      this.child.unref();
    }
    for (const waiter of this.pending.splice(0)) waiter.reject(error);
  }
}

/** One of `dirs` per file system (device) they are on; directories that are gone are left out. */
function onePerFileSystem(dirs: readonly string[]): string[] {
  const byDevice = new Map<number, string>();
  for (const dir of dirs) {
    const info = statSync(dir, { throwIfNoEntry: false });
    if (info !== undefined && !byDevice.has(info.dev)) byDevice.set(info.dev, dir);
  }
  return [...byDevice.values()];
}

/** A `sync -f` of its own, for what the helper cannot take. */
function runSyncF(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      const child = spawn("sync", ["-f", "--", path], { stdio: "ignore", timeout: SYNC_TIMEOUT_MS });
      child.on("error", reject);
      child.on("exit", (code, signal) => (code === 0 ? resolve() : reject(new Error(`sync -f exited with ${signal ?? code}`))));
    } catch (error) {
      // Some runtimes throw at once when spawning is not permitted.
      reject(error);
    }
  });
}

async function fsyncPath(path: string, directory: boolean): Promise<void> {
  let fd: number;
  try {
    fd = await openReadOnly(path);
  } catch (error) {
    if (!isErrno(error, "ENOENT", "ENOTDIR")) throw error;
    // A reader may have moved a fresh message from new/ to cur/, adding flags: same inode, still ours.
    const moved = directory ? null : movedToCur(path);
    if (moved !== null) await fsyncPath(moved, false);
    return;
  }
  try {
    await fsyncFd(fd);
  } catch (error) {
    if (!(directory && isErrno(error, ...UNSYNCABLE))) throw error;
  } finally {
    await closeFd(fd).catch(() => undefined);
  }
}

/** A Maildir subdirectory's entries by message base (the name up to its first `,` or `:`). */
export function indexByBase(names: readonly string[]): ReadonlyMap<string, string> {
  const index = new Map<string, string>();
  for (const name of names) {
    const base = parseName(name)?.base;
    if (base !== undefined && !index.has(base)) index.set(base, name);
  }
  return index;
}

/**
 * Where `<maildir>/new/<name>` is now if a reader renamed it: moved to cur/ with flags, or renamed
 * with other size fields (Dovecot corrects a wrong `S=`) or extra ones (mbsync's `,U=`), in cur/ or
 * new/; found by its base. `index` lists a directory by base (a replay passes one that remembers the
 * directories it read).
 */
export function movedToCur(
  path: string,
  index: (dir: string) => ReadonlyMap<string, string> = (dir) => indexByBase(readdirSync(dir)),
): string | null {
  const parent = dirname(path);
  if (basename(parent) !== "new") return null;
  const base = parseName(basename(path))?.base;
  if (base === undefined) return null;
  for (const sub of ["cur", "new"]) {
    const dir = join(dirname(parent), sub);
    try {
      const name = index(dir).get(base);
      if (name !== undefined) return join(dir, name);
    } catch {
      // No such directory: nothing was moved there.
    }
  }
  return null;
}
