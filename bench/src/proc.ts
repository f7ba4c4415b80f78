// Whole-process figures for a server we started, read from /proc (Linux): resident memory, and the CPU
// of the database server behind a store. The servers' own CPU is measured by the shared drivers
// (shared/ref/lib/proctree.py: the process tree, reaped children included).
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";

/** Resident set size in kB. */
export function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /VmRSS:\s+(\d+)/.exec(status);
  return match ? Number(match[1]) : 0;
}

/** Samples RSS every `everyMs` until stopped; returns the peak. */
export function sampleRss(pid: number, everyMs = 20): { stop(): number } {
  let peak = rssKb(pid);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, rssKb(pid));
    } catch {
      // process gone
    }
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

let ticksPerSecond: number | undefined;

/**
 * CPU time in ms of every process whose command name is `comm` (all of a database server's
 * processes: PostgreSQL's backends and helpers, each Redis server), reaped children included, so
 * that a backend that ends during a run still counts. Whatever else that server serves counts too.
 */
export function cpuMsOfCommand(comm: string): number {
  ticksPerSecond ??= Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  let ticks = 0;
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // The name sits in parentheses and may hold spaces; the fields after it are plain numbers.
      const close = stat.lastIndexOf(")");
      if (stat.slice(stat.indexOf("(") + 1, close) !== comm) continue;
      const fields = stat.slice(close + 2).split(" ");
      // utime, stime, cutime, cstime: fields 14-17 of the line, 12-15 after the name.
      ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return (ticks * 1000) / ticksPerSecond;
}
