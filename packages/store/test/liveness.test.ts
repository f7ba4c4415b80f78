// Process stamps: what a lease or log records about its writer, and the judgement another process
// makes from it later. "Ended" must only ever be said when certain; anything unknowable is alive.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parseProcessStamp, processHasEnded, processStamp, processStampOf, type ProcessStamp } from "../src/index.js";

const startOf = (pid: number): string => processStampOf(pid)!.start;
// Linux never hands out a pid above 2^22.
const NO_SUCH_PID = 2 ** 22 + 1;

describe.skipIf(processStamp() === null)("process stamps (Linux)", () => {
  it("stamps this process with its boot, pid namespace, pid and start time", () => {
    const me = processStamp()!;
    expect(me).toEqual({
      boot: readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim(),
      pidns: expect.stringMatching(/^pid:\[\d+\]$/),
      pid: process.pid,
      start: startOf(process.pid),
    });
    expect(processHasEnded(me)).toBe(false);
  });

  it("says a process has ended once it exits, and not while it runs", async () => {
    const child = spawn("sleep", ["30"], { stdio: "ignore" });
    await new Promise((resolve) => child.once("spawn", resolve));
    const stamp: ProcessStamp = { ...processStamp()!, pid: child.pid!, start: startOf(child.pid!) };
    expect(processHasEnded(stamp)).toBe(false);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    expect(processHasEnded(stamp)).toBe(true);
  });

  it("stamps another process by its pid, or says there is none", () => {
    const field22 = readFileSync(`/proc/${process.ppid}/stat`, "latin1").split(") ")[1]!.split(" ")[19];
    expect(processStampOf(process.ppid)).toEqual({ ...processStamp()!, pid: process.ppid, start: field22 });
    expect(processStampOf(NO_SUCH_PID)).toBeNull();
  });

  it("says a pid now used by a process started at another time has ended", () => {
    expect(processHasEnded({ ...processStamp()!, start: "1" })).toBe(true);
    expect(processHasEnded({ ...processStamp()!, pid: process.ppid, start: "1" })).toBe(true);
    expect(processHasEnded({ ...processStamp()!, pid: process.ppid, start: startOf(process.ppid) })).toBe(false);
  });

  it("never says ended for what it cannot judge: another boot, another pid namespace, no stamp", () => {
    const gone = { ...processStamp()!, pid: NO_SUCH_PID };
    expect(processHasEnded(gone)).toBe(true);
    expect(processHasEnded({ ...gone, boot: "00000000-0000-0000-0000-000000000000" })).toBe(false);
    expect(processHasEnded({ ...gone, pidns: "pid:[1]" })).toBe(false);
    expect(processHasEnded(null)).toBe(false);
  });

  it("reads a stamp back from JSON and refuses anything else", () => {
    const me = processStamp()!;
    expect(parseProcessStamp(JSON.parse(JSON.stringify(me)))).toEqual(me);
    expect(parseProcessStamp(JSON.stringify(me))).toEqual(me);
    for (const junk of [null, "x", "{", "null", 3, {}, { ...me, pid: "1" }, { ...me, pid: -1 }, { ...me, start: 5 }, { ...me, boot: undefined }]) {
      expect(parseProcessStamp(junk)).toBeNull();
    }
  });
});
