import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { hasStoreErrorCode, silentLogger, type Logger } from "@mailroom/store";
import { createFsStore, fsAdapter } from "../src/index.js";
import { SpaceReserve, type FreeSpace } from "../src/reserve.js";
import { tempRoot, text } from "./helpers.js";

const MIB = 1024 * 1024;
const noSpace = (error: unknown): boolean => hasStoreErrorCode(error, "no-space");

/** A file system whose free space the test sets, counting how often it was asked. */
interface FakeDisk {
  free: number;
  calls: number;
  fail: Error | null;
  readonly measure: FreeSpace;
}

function fakeDisk(free: number, blockSize = 4096): FakeDisk {
  const disk: FakeDisk = {
    free,
    calls: 0,
    fail: null,
    measure: async () => {
      disk.calls++;
      if (disk.fail) throw disk.fail;
      return { free: disk.free, blockSize };
    },
  };
  return disk;
}

function clock() {
  const c = { t: 1_000_000, now: () => c.t };
  return c;
}

function admitNow(reserve: SpaceReserve, octets: number): void {
  // Fresh measurement: decided at once, without a promise.
  expect(reserve.admit(octets)).toBeUndefined();
}

describe("free-space reserve", () => {
  it("measures at most once a second, however many messages come in", async () => {
    const disk = fakeDisk(100 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, c.now);
    await reserve.admit(0);
    expect(disk.calls).toBe(1);
    for (let i = 0; i < 1000; i++) {
      c.t += 0.5;
      admitNow(reserve, 4000);
    }
    expect(disk.calls).toBe(1);
    c.t += 999 - 500;
    admitNow(reserve, 4000);
    c.t += 1;
    // A second after the measurement: the next delivery waits for a new one.
    const waiting = reserve.admit(4000);
    expect(waiting).toBeInstanceOf(Promise);
    await waiting;
    expect(disk.calls).toBe(2);
  });

  it("callers that find the measurement stale share one statfs", async () => {
    const disk = fakeDisk(100 * MIB);
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, clock().now);
    await Promise.all(Array.from({ length: 50 }, () => reserve.admit(1000)));
    expect(disk.calls).toBe(1);
  });

  it("refuses below the reserve, and counts what it let through since the last measurement", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, c.now);
    await reserve.admit(0);
    // 10 MiB free, 4 kept: 6 MiB may go, in whole blocks.
    admitNow(reserve, 3 * MIB);
    admitNow(reserve, 3 * MIB - 4096);
    // One more octet takes one more block: exactly at the reserve, still allowed.
    admitNow(reserve, 1);
    expect(() => reserve.admit(1)).toThrow(expect.objectContaining({ code: "no-space" }));
    // Nothing fits any more, but a message of unknown size is not refused while free space is at
    // the reserve, only below it.
    admitNow(reserve, 0);
    expect(() => reserve.admit(1)).toThrow(/min_free_mb/);
    // A new measurement replaces the count: mail was deleted meanwhile.
    c.t += 1000;
    disk.free = 5 * MIB;
    await reserve.admit(MIB);
    expect(() => reserve.admit(1)).toThrow(expect.objectContaining({ code: "no-space" }));
    // Below the reserve, even a message of unknown size is refused (the message names the numbers).
    c.t += 1000;
    disk.free = 4 * MIB - 1;
    await expect(reserve.admit(0)).rejects.toSatisfy(noSpace);
    await expect(Promise.resolve().then(() => reserve.admit(0))).rejects.toThrow("3 MiB free on the store's file system, 4 MiB kept in reserve");
  });

  it("deliveries waiting for a measurement are decided one after another against it", async () => {
    const disk = fakeDisk(10 * MIB);
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, clock().now);
    const outcomes = await Promise.allSettled(Array.from({ length: 10 }, () => reserve.admit(MIB)));
    expect(disk.calls).toBe(1);
    expect(outcomes.map((o) => o.status)).toEqual([...Array(6).fill("fulfilled"), ...Array(4).fill("rejected")]);
  });

  it("lets mail through, and says so once, when free space cannot be measured", async () => {
    const disk = fakeDisk(0);
    disk.fail = Object.assign(new Error("statfs: function not implemented"), { code: "ENOSYS" });
    const warnings: unknown[] = [];
    const logger: Logger = { ...silentLogger, warn: (...args: unknown[]) => void warnings.push(args), child: () => logger };
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, logger, c.now);
    await reserve.admit(MIB);
    admitNow(reserve, 100 * MIB);
    c.t += 1000;
    await reserve.admit(MIB);
    expect(disk.calls).toBe(2);
    expect(warnings).toHaveLength(1);
    // It works again: the reserve holds again.
    disk.fail = null;
    disk.free = 5 * MIB;
    c.t += 1000;
    await expect(Promise.resolve().then(() => reserve.admit(2 * MIB))).rejects.toSatisfy(noSpace);
  });

  it("is a store option: min_free_mb through the adapter, minFreeMb in code; invalid values are refused by name", async () => {
    const root = await tempRoot("reserve");
    for (const bad of [-1, 1.5, "64", true, null, 2 ** 50]) {
      await expect(fsAdapter.open(`maildir:${join(root, "a")}`, { min_free_mb: bad as never })).rejects.toThrow(
        "maildir: option min_free_mb must be a whole number of MiB, 0 or more",
      );
      await expect(fsAdapter.open(`maildir:${join(root, "a")}`, { min_free_mb: bad as never })).rejects.toSatisfy((e) =>
        hasStoreErrorCode(e, "invalid-name"),
      );
    }
    await expect(createFsStore({ root: join(root, "b"), minFreeMb: -3 })).rejects.toThrow("minFreeMb");
    expect(fsAdapter.optionKeys).toContain("min_free_mb");
    // A reserve larger than any disk refuses every delivery, enqueue and append with no-space...
    const full = await fsAdapter.open(`maildir:${join(root, "c")}`, { min_free_mb: 2 ** 30, fsync: false });
    await expect(full.deliver(["a@example.test"], text("Subject: x\r\n\r\nx\r\n"))).rejects.toSatisfy(noSpace);
    await expect(full.mailbox("a@example.test").append(text("Subject: x\r\n\r\nx\r\n"))).rejects.toSatisfy(noSpace);
    await expect(full.queue.enqueue({ sender: "a@example.test", recipients: ["b@far.test"] }, text("x\r\n"))).rejects.toSatisfy(noSpace);
    expect(await full.mailbox("a@example.test").list()).toEqual([]);
    expect(await full.queue.list()).toEqual([]);
    await full.close();
    // ...and 0 turns the reserve off; 64n (a TOML bigint) is read as 64.
    for (const off of [0, 0n, 64n]) {
      const store = await fsAdapter.open(`maildir:${join(root, "d")}`, { min_free_mb: off, fsync: false });
      await store.deliver(["a@example.test"], text("Subject: x\r\n\r\nx\r\n"));
      await store.close();
    }
  });
});
