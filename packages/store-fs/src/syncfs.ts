import { execFile } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { mapLimited } from "./concurrency.js";
import { closeFd, fsyncFd, openReadOnly } from "./fdio.js";
import { isErrno } from "./errors.js";
import { UNSYNCABLE } from "./fsutil.js";

/**
 * Makes files written without fsync durable after the fact, in bulk. No JavaScript runtime exposes
 * syncfs(2), so the first choice is coreutils' `sync -f` (one syncfs per file system named), which
 * writes back a second's worth of deliveries in one go: on the benchmark machine 2,000 fresh 4 KB
 * files took 24 ms that way against 420 ms of one fsync each. Where `sync -f` is missing or refused
 * (BusyBox without -f, macOS, a Deno without --allow-run), every file and directory is fsynced
 * instead, off the delivery path either way.
 */
export class BulkSync {
  private syncfsWorks: boolean;

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
          await runSyncF(fileSystems);
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

function runSyncF(paths: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    try {
      execFile("sync", ["-f", "--", ...paths], { timeout: 120_000 }, (error, _stdout, stderr) => {
        if (error) reject(new Error(`${error.message}${stderr ? `: ${String(stderr).trim()}` : ""}`));
        else resolve();
      });
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

/**
 * `<maildir>/cur/<name>:2,<flags>` for `<maildir>/new/<name>`, if there is one. `list` reads cur/ (a
 * replay passes one that remembers each directory it read).
 */
export function movedToCur(path: string, list: (dir: string) => readonly string[] = readdirSync): string | null {
  const parent = dirname(path);
  if (basename(parent) !== "new") return null;
  const cur = join(dirname(parent), "cur");
  const prefix = `${basename(path)}:`;
  try {
    const entry = list(cur).find((name) => name.startsWith(prefix));
    return entry === undefined ? null : join(cur, entry);
  } catch {
    return null;
  }
}
