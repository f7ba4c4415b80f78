import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { cpuMsOfCommand } from "../src/proc.js";

describe("the database server's CPU", () => {
  it("sums the CPU of every process of one command name, and grows as they work", () => {
    const comm = readFileSync("/proc/self/comm", "utf8").trim();
    const before = cpuMsOfCommand(comm);
    // Busy until this process has used 150 ms more CPU, however much the machine lends it.
    const start = process.cpuUsage();
    let spin = 0;
    for (;;) {
      const used = process.cpuUsage(start);
      if (used.user + used.system >= 150_000) break;
      spin++;
    }
    expect(spin).toBeGreaterThan(0);
    const after = cpuMsOfCommand(comm);
    expect(before).toBeGreaterThan(0);
    expect(after - before).toBeGreaterThanOrEqual(100);
  });

  it("is 0 for a command nothing runs", () => {
    expect(cpuMsOfCommand("no-such-server")).toBe(0);
  });
});
