import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { StoreError, parseProcessStamp, processHasEnded, processStamp } from "@mailroom/store";
import { isErrno } from "./errors.js";

/**
 * Modes for everything the store creates: mail, password hashes and queue items are nobody else's
 * business, so files are owner-only and directories too (Postfix and Dovecot do the same; a shared
 * group must be granted by the operator on purpose). The process umask can only narrow these.
 */
export const PRIVATE_FILE = 0o600;
export const PRIVATE_DIR = 0o700;

/** Modes of what other Maildir software may share with us: the maildirs and the message files. */
export interface MailModes {
  readonly dir: number;
  readonly file: number;
}

/**
 * Dovecot's rule, on purpose only: when the store's root has the setgid bit (a group the operator
 * chose, `chgrp vmail root; chmod 3770 root`), its group bits carry over to the maildirs and message
 * files made under it, so that Dovecot or a backup job running as another user of that group shares
 * the mail. A root without setgid (a plain `mkdir`, 0755) shares nothing. Others never get any bit,
 * and Mailroom's own files (the directory with its password hashes, state, leases, the queue) stay
 * owner-only whatever the root says.
 */
export function mailModesOf(rootMode: number): MailModes {
  if ((rootMode & 0o2000) === 0) return { dir: PRIVATE_DIR, file: PRIVATE_FILE };
  const group = rootMode & 0o070;
  return { dir: PRIVATE_DIR | group, file: PRIVATE_FILE | (group & 0o060) };
}

/**
 * A root its group may write in, without the sticky bit, lets a member of that group rename its own
 * file over one of ours: the directory file, with the accounts and their password hashes.
 */
export function groupMayReplaceOwnFiles(rootMode: number): boolean {
  return (rootMode & 0o020) !== 0 && (rootMode & 0o1000) === 0;
}

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
    const handle = await fsp.open(temp, "wx", PRIVATE_FILE);
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
export async function makeDirs(path: string, policy: SyncPolicy, mode = PRIVATE_DIR): Promise<void> {
  try {
    await fsp.mkdir(path, mode);
    await fsyncDir(dirname(path), policy);
    return;
  } catch (error) {
    if (isErrno(error, "EEXIST")) return;
    if (!isErrno(error, "ENOENT")) throw error;
  }
  await makeDirs(dirname(path), policy, mode);
  try {
    await fsp.mkdir(path, mode);
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

/** The file in a lock directory that names its holder (a process stamp, see @mailroom/store). */
const OWNER_PREFIX = "owner.";
/** A breaker that died while breaking leaves its mutex; it is cleared after this long. */
const BREAKER_STALE_MS = 30_000;

/**
 * A mutex between processes on one host: whoever creates the directory owns it (mkdir is atomic on
 * every local file system and on NFS). The owner touches it every second and names itself in it, so
 * a lock is broken only when it is stale (untouched for `staleMs`) and its owner is not a process
 * this machine can see running: a heartbeat that lags behind a slow disk does not hand a live
 * holder's lock to someone else.
 */
export async function withDirLock<T>(lockPath: string, body: () => Promise<T>, options: DirLockOptions = {}): Promise<T> {
  const staleMs = options.staleMs ?? 5_000;
  const deadline = Date.now() + (options.waitMs ?? 15_000);
  let pause = 2;
  for (;;) {
    try {
      await fsp.mkdir(lockPath, PRIVATE_DIR);
      break;
    } catch (error) {
      if (!isErrno(error, "EEXIST")) throw error;
    }
    if (await breakIfAbandoned(lockPath, staleMs)) continue;
    if (Date.now() > deadline) {
      throw new StoreError("temporary", `maildir: timed out waiting for lock ${lockPath}`);
    }
    await sleep(pause + Math.random() * pause);
    pause = Math.min(pause * 2, 50);
  }
  // Not flushed: it speaks only for a running process, and after a restart the lock is stale anyway.
  const owner = join(lockPath, `${OWNER_PREFIX}${uniqueSuffix()}`);
  const stamp = processStamp();
  if (stamp !== null) await fsp.writeFile(owner, JSON.stringify(stamp), { mode: PRIVATE_FILE }).catch(() => undefined);
  const heartbeat = setInterval(() => {
    const now = new Date();
    fsp.utimes(lockPath, now, now).catch(() => undefined);
  }, 1_000);
  heartbeat.unref?.();
  try {
    return await body();
  } finally {
    clearInterval(heartbeat);
    // Only our own name goes; should the directory now be someone else's, it is not empty and stays.
    await fsp.unlink(owner).catch(() => undefined);
    await fsp.rmdir(lockPath).catch(() => undefined);
  }
}

/**
 * Removes `lockPath` if its holder is gone; true when the caller should try to take it again. One
 * breaker at a time (a mutex directory of its own), deciding on what it sees while it holds that
 * mutex: two breakers acting on one earlier look could remove a lock taken in between.
 */
async function breakIfAbandoned(lockPath: string, staleMs: number): Promise<boolean> {
  const breaking = `${lockPath}.breaking`;
  try {
    await fsp.mkdir(breaking, PRIVATE_DIR);
  } catch (error) {
    if (!isErrno(error, "EEXIST")) throw error;
    const info = await fsp.stat(breaking).catch(() => null);
    if (info !== null && Date.now() - info.mtimeMs > BREAKER_STALE_MS) await fsp.rmdir(breaking).catch(() => undefined);
    return false;
  }
  try {
    let info;
    try {
      info = await fsp.stat(lockPath);
    } catch (error) {
      if (isErrno(error, "ENOENT")) return true;
      throw error;
    }
    if (Date.now() - info.mtimeMs <= staleMs || (await ownerRuns(lockPath))) return false;
    const aside = `${lockPath}.stale-${uniqueSuffix()}`;
    await fsp.rename(lockPath, aside);
    await fsp.rm(aside, { recursive: true, force: true }).catch(() => undefined);
    return true;
  } finally {
    await fsp.rmdir(breaking).catch(() => undefined);
  }
}

/**
 * True when the lock names a process that this machine can see running. A lock without a name (an
 * older version's, or one whose name was never written), or named by a process of another boot or
 * pid namespace, falls back to the heartbeat alone.
 */
async function ownerRuns(lockPath: string): Promise<boolean> {
  const me = processStamp();
  if (me === null) return false;
  const names = await fsp.readdir(lockPath).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(OWNER_PREFIX)) continue;
    const stamp = parseProcessStamp(await fsp.readFile(join(lockPath, name), "utf8").catch(() => ""));
    if (stamp !== null && stamp.boot === me.boot && stamp.pidns === me.pidns && !processHasEnded(stamp)) return true;
  }
  return false;
}

export function childPath(dir: string, ...parts: string[]): string {
  return join(dir, ...parts);
}
