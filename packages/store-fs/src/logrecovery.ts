import { closeSync, fstatSync, openSync, readFileSync, readdirSync, statSync } from "node:fs";
import { promises as fsp } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import { currentBootId, processHasEnded, processStamp, type Logger } from "@mailroom/store";
import { LOG_DIR, liveLogs } from "./deliverylog.js";
import { isErrno } from "./errors.js";
import { fsyncDir, makeDirs, uniqueSuffix, unlinkQuiet, withDirLock, type MailModes, type SyncPolicy } from "./fsutil.js";
import { readRecords, type LogOwner } from "./logformat.js";
import { indexByBase, movedToCur, type BulkSync } from "./syncfs.js";

export interface RecoveryContext {
  readonly root: string;
  readonly policy: SyncPolicy;
  readonly mailModes: MailModes;
  readonly logger: Logger;
  readonly bulk: BulkSync;
}

/**
 * Replays the delivery logs of processes that stopped without retiring them (see deliverylog.ts).
 *
 * - Same boot (the process was killed, the machine kept running): the page cache still holds every
 *   file the process published, so nothing is rewritten; the files are only made durable. A published
 *   file that is gone was removed on purpose (POP3 DELE, a Dovecot client) and stays gone; a record
 *   whose file never got published belongs to a delivery that was never acknowledged.
 * - After a restart of the machine (another boot id, or none to compare): each recorded file is
 *   checked against the log and written again where it is missing, short or different. Mail deleted
 *   in the last second before a power cut can come back this way; mail acknowledged is never lost.
 *
 * Logs whose owner may still run are left alone (see `ownerAlive`), and their number returned. A lock
 * directory keeps two processes that open the store at once from replaying the same log.
 */
export async function recoverDeliveryLogs(ctx: RecoveryContext, bootId = currentBootId()): Promise<number> {
  const dir = join(ctx.root, LOG_DIR);
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (error) {
    if (isErrno(error, "ENOENT", "ENOTDIR")) return 0;
    throw error;
  }
  const logs = names
    .filter((name) => name.endsWith(".log"))
    .sort()
    .map((name) => join(dir, name))
    .filter((path) => !liveLogs.has(path));
  if (logs.length === 0) return 0;
  let left = 0;
  await withDirLock(join(dir, "replay.lock"), async () => {
    for (const path of logs) if (!(await replayIfAbandoned(ctx, path, bootId))) left++;
  }, { staleMs: 5_000, waitMs: 120_000 });
  return left;
}

/**
 * Tries again, every `everyMs` until none is left, the logs a recovery left to owners that may still
 * run: an owner in another container is only judged abandoned after five quiet minutes, and a
 * server that started meanwhile (the container's replacement) should not keep its log until its own
 * next restart. The timer does not keep a program alive; `stop` ends it.
 */
export function retryLeftLogs(ctx: RecoveryContext, everyMs = 60_000): { stop(): void } {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    recoverDeliveryLogs(ctx)
      .then((left) => {
        if (left === 0) clearInterval(timer);
      })
      .catch((error: unknown) => ctx.logger.warn({ err: error }, "maildir: replaying a delivery log left by another process failed; will retry"))
      .finally(() => {
        running = false;
      });
  }, everyMs);
  timer.unref?.();
  return { stop: () => clearInterval(timer) };
}

/**
 * A live owner appends to a log for about a second and then retires it; one untouched for this long
 * belongs to a process that is gone even if its pid is in use again (by an unrelated process).
 */
const ABANDONED_AFTER_MS = 5 * 60_000;

/**
 * Whether the log's owner may still be appending to it. Replaying unlinks the log, and a live owner's
 * later records would then be durable in a file no restart finds: when in doubt, alive.
 *
 * - Another boot: the owner is gone (the machine restarted). Where there is no boot id to compare,
 *   the rules for an unstamped log below apply.
 * - The owner's pid namespace is ours (its stamp: `processStamp` in @mailroom/store): the pid and its
 *   start time say exactly whether it runs, however long its log has been quiet.
 * - Another pid namespace (another container on this kernel): its pids mean nothing here, so only a
 *   log nothing has written to for five minutes is abandoned (a live owner retires its logs within
 *   seconds).
 * - A log from before the stamp: its pid alive and written to in the last five minutes.
 */
function ownerAlive(owner: LogOwner, bootId: string, lastWrite: number): boolean {
  // Without a boot id (no Linux /proc) boots cannot be told apart, so neither can a restart: the
  // owner is then judged by its log's age and its pid, as a log from before the stamp is.
  if (bootId !== "" && owner.boot !== bootId) return false;
  const stamp =
    owner.pidns !== undefined && owner.start !== undefined
      ? { boot: owner.boot, pidns: owner.pidns, pid: owner.pid, start: owner.start }
      : null;
  const me = processStamp();
  if (stamp !== null && stamp.pidns === me?.pidns) {
    // Our own logs that are still open were skipped before: one of ours here is a leftover.
    if (stamp.pid === me.pid && stamp.start === me.start) return false;
    return !processHasEnded(stamp);
  }
  if (Date.now() - lastWrite > ABANDONED_AFTER_MS) return false;
  if (stamp !== null) return true;
  if (owner.pid === process.pid) return false; // an earlier process that had our pid (a container restart)
  try {
    process.kill(owner.pid, 0);
    return true;
  } catch (error) {
    return isErrno(error, "EPERM");
  }
}

/** False when the log was left to an owner that may still run. */
async function replayIfAbandoned(ctx: RecoveryContext, path: string, bootId: string): Promise<boolean> {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    if (isErrno(error, "ENOENT")) return true; // replayed by another process meanwhile
    throw error;
  }
  const files: string[] = [];
  const dirs = new Set<string>();
  let restored = 0;
  let repaired = 0;
  let verify = false;
  try {
    const records = readRecords(fd);
    const first = records.next();
    if (!first.done && first.value.header.kind === "owner") {
      const owner = first.value.header;
      if (ownerAlive(owner, bootId, fstatSync(fd).mtimeMs)) return false;
      verify = bootId === "" || owner.boot !== bootId;
      // Each directory is listed once per replay, and again when a file is missed in a listing more
      // than a second old: a reader (Dovecot, after the reboot) may have moved it since.
      const listings = new Map<string, { readonly at: number; readonly index: ReadonlyMap<string, string> }>();
      const listing = (dir: string, fresh: boolean): ReadonlyMap<string, string> => {
        const known = listings.get(dir);
        if (known !== undefined && !(fresh && Date.now() - known.at > 1000)) return known.index;
        const index = indexByBase(readdirSync(dir));
        listings.set(dir, { at: Date.now(), index });
        return index;
      };
      for (const { header, body } of records) {
        if (header.kind !== "delivery") continue;
        for (const relative of header.targets) {
          const target = resolve(ctx.root, relative);
          if (!target.startsWith(ctx.root + sep)) continue;
          const found = locate(target, listing);
          if (found === null) {
            if (!verify) continue;
            await rewrite(ctx, target, body, header.mtimeMs);
            restored++;
            files.push(target);
          } else {
            if (verify && !sameContent(found, body)) {
              await rewrite(ctx, found, body, header.mtimeMs);
              repaired++;
            }
            files.push(found);
          }
          dirs.add(dirname(files[files.length - 1]!));
        }
      }
    }
    // Else the log was cut short at its birth: no record in it was ever acknowledged.
  } finally {
    closeSync(fd);
  }
  await ctx.bulk.sync(files, dirs);
  await unlinkQuiet(path);
  await fsyncDir(dirname(path), ctx.policy);
  ctx.logger.warn(
    { log: basename(path), messages: files.length, restored, repaired, verified: verify },
    "maildir: replayed the delivery log of a process that stopped without retiring it",
  );
  return true;
}

/** Where a published file is now: under its name in new/, or renamed or moved to cur/ by a reader. */
function locate(target: string, listing: (dir: string, fresh: boolean) => ReadonlyMap<string, string>): string | null {
  if (statSync(target, { throwIfNoEntry: false }) !== undefined) return target;
  return movedToCur(target, (dir) => listing(dir, false)) ?? movedToCur(target, (dir) => listing(dir, true));
}

function sameContent(path: string, body: Uint8Array): boolean {
  try {
    return readFileSync(path).equals(body);
  } catch {
    return false;
  }
}

/** Writes `body` to `path` through the maildir's tmp/, durably, with the recorded modification time. */
async function rewrite(ctx: RecoveryContext, path: string, body: Uint8Array, mtimeMs: number): Promise<void> {
  const maildir = dirname(dirname(path));
  for (const sub of ["tmp", "new", "cur"]) await makeDirs(join(maildir, sub), ctx.policy, ctx.mailModes.dir);
  const temp = join(maildir, "tmp", `${basename(path).split(":")[0]}.restore-${uniqueSuffix()}`);
  try {
    const handle = await fsp.open(temp, "wx", ctx.mailModes.file);
    try {
      await handle.writeFile(body);
      const when = new Date(mtimeMs);
      await handle.utimes(when, when);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fsp.rename(temp, path);
  } finally {
    await unlinkQuiet(temp).catch(() => undefined);
  }
  await fsyncDir(dirname(path), ctx.policy);
}
