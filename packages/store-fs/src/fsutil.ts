import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { StoreError } from "@mailroom/store";
import { isErrno } from "./errors.js";

/** Durability switch shared by every helper: tests and throwaway stores may turn fsync off. */
export interface SyncPolicy {
  readonly fsync: boolean;
}

/**
 * Flushes a directory entry list, which is what makes a create, link, rename or unlink survive a
 * power cut. Some platforms cannot open directories (Windows) or refuse to sync them; there the
 * rename is the best we get.
 */
export async function fsyncDir(path: string, policy: SyncPolicy): Promise<void> {
  if (!policy.fsync) return;
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(path, "r");
    await handle.sync();
  } catch (error) {
    if (!isErrno(error, ...UNSYNCABLE)) throw error;
  } finally {
    await handle?.close();
  }
}

/** Errors of platforms that cannot open or sync directories (Windows, some network file systems). */
export const UNSYNCABLE = ["EISDIR", "EINVAL", "EPERM", "ENOTSUP", "EBADF"];

export function uniqueSuffix(): string {
  return `${process.pid}.${randomBytes(6).toString("hex")}`;
}

/** Writes a small file so that readers see either the old or the new content, never a mix. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, policy: SyncPolicy): Promise<void> {
  const temp = `${path}.tmp-${uniqueSuffix()}`;
  try {
    const handle = await fsp.open(temp, "wx");
    try {
      await handle.writeFile(data);
      if (policy.fsync) await handle.sync();
    } finally {
      await handle.close();
    }
    await fsp.rename(temp, path);
  } catch (error) {
    await unlinkQuiet(temp);
    throw error;
  }
  await fsyncDir(dirname(path), policy);
}

/** Unlinks and treats "already gone" as success. */
export async function unlinkQuiet(path: string): Promise<boolean> {
  try {
    await fsp.unlink(path);
    return true;
  } catch (error) {
    if (isErrno(error, "ENOENT")) return false;
    throw error;
  }
}

export async function readTextOrNull(path: string): Promise<string | null> {
  try {
    return await fsp.readFile(path, "utf8");
  } catch (error) {
    if (isErrno(error, "ENOENT")) return null;
    throw error;
  }
}

export async function readdirOrEmpty(path: string): Promise<string[]> {
  try {
    return await fsp.readdir(path);
  } catch (error) {
    if (isErrno(error, "ENOENT", "ENOTDIR")) return [];
    throw error;
  }
}

/** mkdir -p that also syncs each parent it changed, so a new mailbox survives a crash. */
export async function makeDirs(path: string, policy: SyncPolicy): Promise<void> {
  try {
    await fsp.mkdir(path);
    await fsyncDir(dirname(path), policy);
    return;
  } catch (error) {
    if (isErrno(error, "EEXIST")) return;
    if (!isErrno(error, "ENOENT")) throw error;
  }
  await makeDirs(dirname(path), policy);
  try {
    await fsp.mkdir(path);
    await fsyncDir(dirname(path), policy);
  } catch (error) {
    if (!isErrno(error, "EEXIST")) throw error;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export interface DirLockOptions {
  /** A lock directory untouched for this long belongs to a crashed process and is broken. */
  readonly staleMs?: number;
  /** Give up with "temporary" after waiting this long. */
  readonly waitMs?: number;
}

/**
 * A mutex between processes on one host: whoever creates the directory owns it (mkdir is atomic on
 * every local file system and on NFS). The owner touches it every second, so "stale" really means
 * "its owner is gone", and a long critical section is not broken into.
 */
export async function withDirLock<T>(lockPath: string, body: () => Promise<T>, options: DirLockOptions = {}): Promise<T> {
  const staleMs = options.staleMs ?? 5_000;
  const deadline = Date.now() + (options.waitMs ?? 15_000);
  let pause = 2;
  for (;;) {
    try {
      await fsp.mkdir(lockPath);
      break;
    } catch (error) {
      if (!isErrno(error, "EEXIST")) throw error;
    }
    try {
      const info = await fsp.stat(lockPath);
      if (Date.now() - info.mtimeMs > staleMs) {
        // Renaming first means only one of several breakers removes it.
        const aside = `${lockPath}.stale-${uniqueSuffix()}`;
        await fsp.rename(lockPath, aside);
        await fsp.rmdir(aside).catch(() => undefined);
        continue;
      }
    } catch (error) {
      if (!isErrno(error, "ENOENT")) throw error;
      continue;
    }
    if (Date.now() > deadline) {
      throw new StoreError("temporary", `maildir: timed out waiting for lock ${lockPath}`);
    }
    await sleep(pause + Math.random() * pause);
    pause = Math.min(pause * 2, 50);
  }
  const heartbeat = setInterval(() => {
    const now = new Date();
    fsp.utimes(lockPath, now, now).catch(() => undefined);
  }, 1_000);
  heartbeat.unref?.();
  try {
    return await body();
  } finally {
    clearInterval(heartbeat);
    await fsp.rmdir(lockPath).catch(() => undefined);
  }
}

export function childPath(dir: string, ...parts: string[]): string {
  return join(dir, ...parts);
}
