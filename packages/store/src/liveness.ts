import { readFileSync, readlinkSync } from "node:fs";

let bootId: string | undefined;

/**
 * Linux's per-boot random id ("" where it cannot be read): something stamped with another one is from
 * before the last restart.
 */
export function currentBootId(): string {
  if (bootId === undefined) {
    try {
      bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    } catch {
      bootId = "";
    }
  }
  return bootId;
}

/**
 * Enough about a process for another process on the same machine to tell later whether it is still
 * running (a lease's holder, a log's writer), so that what a killed process held can be taken over
 * at once instead of after a timeout, as Dovecot does with the pid in its lock files. A pid alone is
 * not enough: pids are reused, and one pid namespace (a container) cannot see the processes of another
 * that shares the store. So the stamp also names the kernel's boot, the pid namespace and the pid's
 * start time (in clock ticks since boot; a reused pid has a later one).
 */
export interface ProcessStamp {
  readonly boot: string;
  readonly pidns: string;
  readonly pid: number;
  readonly start: string;
}

let own: ProcessStamp | null | undefined;

/** This process's stamp, or null where there is no Linux /proc to make one (leases then only expire). */
export function processStamp(): ProcessStamp | null {
  if (own === undefined) own = readOwnStamp();
  return own;
}

function readOwnStamp(): ProcessStamp | null {
  try {
    // A /proc mounted for another pid namespace numbers processes differently from process.pid:
    // its answers about other pids would be about other processes.
    if (readlinkSync("/proc/self") !== String(process.pid)) return null;
    const boot = currentBootId();
    const start = startTimeOf(readFileSync("/proc/self/stat", "latin1"));
    if (boot === "" || start === null) return null;
    return { boot, pidns: readlinkSync("/proc/self/ns/pid"), pid: process.pid, start };
  } catch {
    return null;
  }
}

/**
 * The stamp of another running process of this pid namespace (its pid's current start time), or
 * null where there is no such process or no /proc. For tools and tests that name a live holder.
 */
export function processStampOf(pid: number): ProcessStamp | null {
  const me = processStamp();
  if (!me) return null;
  try {
    const start = startTimeOf(readFileSync(`/proc/${pid}/stat`, "latin1"));
    return start === null ? null : { ...me, pid, start };
  } catch {
    return null;
  }
}

/** Field 22 of /proc/<pid>/stat; the command name before it may hold spaces and parentheses. */
function startTimeOf(stat: string): string | null {
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields[19] ?? null;
}

function stateOf(stat: string): string {
  return stat.charAt(stat.lastIndexOf(")") + 2);
}

/** The stamp a record holds, if the value is one: the object itself or its JSON text. */
export function parseProcessStamp(value: unknown): ProcessStamp | null {
  if (typeof value === "string") {
    try {
      value = JSON.parse(value);
    } catch {
      return null;
    }
  }
  if (value === null || typeof value !== "object") return null;
  const v = value as Partial<ProcessStamp>;
  if (typeof v.boot !== "string" || typeof v.pidns !== "string" || typeof v.start !== "string") return null;
  if (typeof v.pid !== "number" || !Number.isSafeInteger(v.pid) || v.pid <= 0) return null;
  return { boot: v.boot, pidns: v.pidns, pid: v.pid, start: v.start };
}

/**
 * True only when the stamped process has certainly ended: it ran under this boot and in this pid
 * namespace, and its pid is now free, a zombie, or another process's. Anything this process cannot
 * judge (another machine, another container, no /proc) is taken to be alive.
 */
export function processHasEnded(stamp: ProcessStamp | null): boolean {
  const me = processStamp();
  if (!stamp || !me || stamp.boot !== me.boot || stamp.pidns !== me.pidns) return false;
  if (stamp.pid === me.pid) return stamp.start !== me.start;
  // Asked first because /proc may hide other users' processes (hidepid): there a missing entry
  // would not mean a missing process, while kill() still answers EPERM for one that exists.
  if (!exists(stamp.pid)) return true;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${stamp.pid}/stat`, "latin1");
  } catch (error) {
    // Gone since the kill() above, or hidden from us: only the first is certain.
    return (errnoOf(error) === "ENOENT" || errnoOf(error) === "ESRCH") && !exists(stamp.pid);
  }
  const state = stateOf(stat);
  return state === "Z" || state === "X" || startTimeOf(stat) !== stamp.start;
}

/** False only when the kernel says there is no such process (EPERM: there is, another user's). */
function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoOf(error) !== "ESRCH";
  }
}

function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}
