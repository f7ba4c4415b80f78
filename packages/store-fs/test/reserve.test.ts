import { describe, expect, it, vi } from "vitest";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { hasStoreErrorCode, silentLogger, type Logger } from "@mailroom/store";
import { createFsStore, fsAdapter } from "../src/index.js";
import { SpaceReserve, type FreeSpace } from "../src/reserve.js";
import { writeMessageFile } from "../src/writing.js";
import { tempRoot, text } from "./helpers.js";

const MIB = 1024 * 1024;
const noSpace = (error: unknown): boolean => hasStoreErrorCode(error, "no-space");

/**
 * A file system whose free space the test sets, counting how often it was asked. With `gate` set, a
 * measurement looks at `free` when it is asked and answers once the gate opens (a statfs on its way).
 */
interface FakeDisk {
  free: number;
  calls: number;
  fail: Error | null;
  gate: Promise<void> | null;
  readonly measure: FreeSpace;
}

function fakeDisk(free: number, blockSize = 4096, size?: number): FakeDisk {
  const disk: FakeDisk = {
    free,
    calls: 0,
    fail: null,
    gate: null,
    measure: async () => {
      disk.calls++;
      const seen = disk.free;
      if (disk.gate) await disk.gate;
      if (disk.fail) throw disk.fail;
      return { free: seen, blockSize, ...(size === undefined ? {} : { size }) };
    },
  };
  return disk;
}

function clock() {
  const c = { t: 1_000_000, now: () => c.t };
  return c;
}

/** A message of known size let through and written at once. */
function admitNow(reserve: SpaceReserve, octets: number): void {
  // Fresh measurement: decided at once, without a promise.
  const charged = reserve.admit(octets);
  expect(typeof charged).toBe("number");
  reserve.landed(charged as number);
}

/** The same, waiting for a measurement if one is due. */
async function admitted(reserve: SpaceReserve, octets: number): Promise<void> {
  reserve.landed(await reserve.admit(octets));
}

/** One process's arithmetic alone: the whole headroom between measurements (see SHARE). */
const alone = { share: 1 } as const;

describe("free-space reserve", () => {
  it("measures at most once a second, however many messages come in", async () => {
    const disk = fakeDisk(100 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now });
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
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: clock().now });
    await Promise.all(Array.from({ length: 50 }, () => reserve.admit(1000)));
    expect(disk.calls).toBe(1);
  });

  it("refuses below the reserve, and counts what it let through since the last measurement", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
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
    await admitted(reserve, MIB);
    expect(() => reserve.admit(1)).toThrow(expect.objectContaining({ code: "no-space" }));
    // Below the reserve, even a message of unknown size is refused (the message names the numbers).
    c.t += 1000;
    disk.free = 4 * MIB - 1;
    await expect(reserve.admit(0)).rejects.toSatisfy(noSpace);
    await expect(Promise.resolve().then(() => reserve.admit(0))).rejects.toThrow("3 MiB free on the store's file system, 4 MiB kept in reserve");
  });

  it("deliveries waiting for a measurement are decided one after another against it", async () => {
    const disk = fakeDisk(10 * MIB);
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: clock().now, ...alone });
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
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, logger, { now: c.now });
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

  it("lets a message of unknown size through as it is written, refusing part way, and charges it once", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
    await reserve.admit(0);
    const chunk = 64 * 1024;
    // Writes through a meter until it is done or refused; says how far it got.
    const write = async (meter: ReturnType<SpaceReserve["meter"]>, octets: number): Promise<{ written: number; refusal: unknown }> => {
      let written = 0;
      try {
        while (written < octets) {
          const room = meter.add(chunk);
          if (room !== undefined) await room;
          meter.wrote(chunk);
          written += chunk;
        }
        return { written, refusal: null };
      } catch (error) {
        return { written, refusal: error };
      } finally {
        meter.close();
      }
    };
    // 6 MiB above the reserve: one 2 MiB message goes through and is charged exactly its blocks.
    expect(await write(reserve.meter(), 2 * MIB)).toEqual({ written: 2 * MIB, refusal: null });
    expect(reserve.hasRoom(4 * MIB)).toBe(true);
    expect(reserve.hasRoom(4 * MIB + 1)).toBe(false);
    // Two at once, each wanting 3 MiB of the 4 left: at least one is refused part way, before it
    // writes past the reserve, and together they never write more than there was room for.
    const outcomes = await Promise.all([write(reserve.meter(), 3 * MIB), write(reserve.meter(), 3 * MIB)]);
    const refusals = outcomes.map((o) => o.refusal).filter((r) => r !== null);
    expect(refusals.length).toBeGreaterThan(0);
    for (const refusal of refusals) expect(noSpace(refusal)).toBe(true);
    for (const o of outcomes) if (o.refusal === null) expect(o.written).toBe(3 * MIB);
    const written = outcomes[0]!.written + outcomes[1]!.written;
    expect(written).toBeLessThanOrEqual(4 * MIB);
    // What a refused one was let through and did not write was given back; what it wrote stays
    // counted until the next measurement (its file is being removed). Nothing was counted twice.
    expect(reserve.hasRoom(4 * MIB - written)).toBe(true);
    expect(reserve.hasRoom(4 * MIB - written + 1)).toBe(false);
    // Another message gets only as far as what is left.
    const last = reserve.meter();
    const steps = [128, 256, 512, 1024, 1024, 1024].map((k) => k * 1024);
    let through = 0;
    await expect(
      (async () => {
        for (const step of steps) {
          const room = last.add(step);
          if (room !== undefined) await room;
          last.wrote(step);
          through += step;
        }
      })(),
    ).rejects.toSatisfy(noSpace);
    // Its file removed, all it was let through comes back, written or not.
    last.close(true);
    expect(through).toBeLessThanOrEqual(4 * MIB - written);
    expect(reserve.hasRoom(4 * MIB - written)).toBe(true);
    expect(reserve.hasRoom(4 * MIB - written + 1)).toBe(false);
  });

  it("keeps octets a meter was let through but has not written counted across a new measurement", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
    await reserve.admit(0);
    const meter = reserve.meter();
    // 1.5 MiB written in steps of 128, 256, 512 and 1024 KiB: 1920 KiB let through so far.
    for (let i = 0; i < 24; i++) {
      const room = meter.add(64 * 1024);
      if (room !== undefined) await room;
      meter.wrote(64 * 1024);
    }
    // The disk saw the 1.5 MiB written; the 384 KiB let through and not written yet stay counted.
    c.t += 1000;
    disk.free = 10 * MIB - 1.5 * MIB;
    await reserve.admit(0);
    expect(reserve.hasRoom(6 * MIB - 1.5 * MIB - 384 * 1024)).toBe(true);
    expect(reserve.hasRoom(6 * MIB - 1.5 * MIB - 384 * 1024 + 1)).toBe(false);
    // Closed after exactly 1.5 MiB: the 384 KiB come back.
    meter.close();
    meter.close();
    expect(reserve.hasRoom(6 * MIB - 1.5 * MIB)).toBe(true);
    expect(reserve.hasRoom(6 * MIB - 1.5 * MIB + 1)).toBe(false);
  });

  it("counts octets a large message has gathered but not yet written as unseen by a measurement taken meanwhile", async () => {
    const root = await tempRoot("gathered");
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
    await reserve.admit(0);
    const headroom = 6 * MIB;
    const chunk = new Uint8Array(64 * 1024).fill(0x78);
    let open: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let paused: () => void = () => undefined;
    const pausing = new Promise<void>((resolve) => (paused = resolve));
    async function* source(): AsyncGenerator<Uint8Array> {
      yield chunk;
      // 64 KiB handed over and gathered: half a write batch, nothing written yet.
      paused();
      await gate;
      yield chunk;
    }
    const writing = writeMessageFile(join(root, "large"), source(), { fsync: false }, undefined, undefined, reserve.meter());
    await pausing;
    c.t += 1000;
    // The disk has seen nothing of the message: the 128 KiB step it was let through stays charged.
    expect(await reserve.hasRoom(headroom - 128 * 1024)).toBe(true);
    expect(reserve.hasRoom(headroom - 128 * 1024 + 1)).toBe(false);
    open();
    expect((await writing).size).toBe(128 * 1024);
    // Written: the next measurement sees it on the disk, and it is not counted a second time.
    disk.free -= 128 * 1024;
    c.t += 1000;
    expect(await reserve.hasRoom(headroom - 128 * 1024)).toBe(true);
    expect(reserve.hasRoom(headroom - 128 * 1024 + 1)).toBe(false);
  });

  it("keeps a message of known size charged across a measurement until it landed, then leaves it to statfs", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
    await reserve.admit(0);
    const headroom = 6 * MIB;
    // A 8000-octet message (two blocks) and its delivery-log record.
    const charged = reserve.admit(8000, 8192);
    expect(charged).toBe(8192 + 8192);
    const charge = charged as number;
    // Measured before its file and record were written: they are still counted.
    c.t += 1000;
    expect(await reserve.hasRoom(headroom - charge)).toBe(true);
    expect(reserve.hasRoom(headroom - charge + 1)).toBe(false);
    // Written; until the next measurement it is counted as let through, after it the disk shows it.
    reserve.landed(charge);
    disk.free -= charge;
    expect(reserve.hasRoom(headroom - charge + 1)).toBe(false);
    c.t += 1000;
    expect(await reserve.hasRoom(headroom - 2 * charge)).toBe(true);
    expect(reserve.hasRoom(headroom - charge)).toBe(true);
    expect(reserve.hasRoom(headroom - charge + 1)).toBe(false);
    // One that lands while a statfs is on its way may not be in its answer: it stays counted.
    const second = reserve.admit(8000, 8192) as number;
    let answer: () => void = () => undefined;
    disk.gate = new Promise<void>((resolve) => (answer = resolve));
    c.t += 1000;
    const measuring = reserve.hasRoom(0);
    reserve.landed(second);
    disk.free -= second;
    answer();
    disk.gate = null;
    expect(await measuring).toBe(true);
    expect(reserve.hasRoom(headroom - charge - second)).toBe(true);
    expect(reserve.hasRoom(headroom - charge - second + 1)).toBe(false);
    // The measurement after that sees it on the disk alone.
    c.t += 1000;
    expect(await reserve.hasRoom(headroom - charge - second)).toBe(true);
    expect(reserve.hasRoom(headroom - charge - second + 1)).toBe(false);
  });

  it("lets through at most a quarter of the headroom between measurements, measuring anew no sooner than 50 ms after the last", async () => {
    const disk = fakeDisk(10 * MIB);
    const reserve = new SpaceReserve("/x", 2 * MIB, disk.measure, silentLogger);
    await reserve.admit(0);
    expect(disk.calls).toBe(1);
    const started = performance.now();
    // 8 MiB of headroom: 2 MiB may go on this measurement, decided at once.
    admitNow(reserve, MIB);
    admitNow(reserve, MIB - 4096);
    // Another worker may have used its quarter too: the next one is decided on a new measurement,
    // taken once 50 ms have passed since the last, not from the stale number.
    const next = reserve.admit(MIB);
    expect(next).toBeInstanceOf(Promise);
    disk.free -= 4 * MIB;
    reserve.landed(await next);
    expect(disk.calls).toBe(2);
    expect(performance.now() - started).toBeGreaterThanOrEqual(45);
    // Measured 6 MiB free, 4 MiB of headroom: what does not fit is refused at once, without another
    // measurement.
    expect(() => reserve.admit(4 * MIB)).toThrow(expect.objectContaining({ code: "no-space" }));
    expect(disk.calls).toBe(2);
    // A big disk: a quarter of its headroom is not reached, and nothing is measured again.
    const big = fakeDisk(1024 * 1024 * MIB);
    const roomy = new SpaceReserve("/x", 64 * MIB, big.measure, silentLogger);
    await roomy.admit(0);
    for (let i = 0; i < 10_000; i++) admitNow(roomy, 100_000);
    expect(big.calls).toBe(1);
  });

  it("counts mail already acknowledged but never refuses it, nor waits for a measurement", async () => {
    const disk = fakeDisk(5 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now });
    await reserve.admit(0);
    expect(reserve.admit(2 * MIB, 0, false)).toBe(2 * MIB);
    // Below the reserve now: new mail is refused, acknowledged mail still goes (the disk decides).
    expect(() => reserve.admit(1)).toThrow(expect.objectContaining({ code: "no-space" }));
    c.t += 5000;
    const meter = reserve.meter(false);
    for (let i = 0; i < 64; i++) expect(meter.add(64 * 1024)).toBeUndefined();
    meter.close();
    expect(disk.calls).toBe(1);
  });

  it("answers hasRoom from the last measurement without letting anything through, measuring when it is stale", async () => {
    const disk = fakeDisk(10 * MIB);
    const c = clock();
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now, ...alone });
    // Not measured yet: a promise, and the answer.
    const first = reserve.hasRoom(MIB);
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toBe(true);
    expect(disk.calls).toBe(1);
    for (let i = 0; i < 100; i++) expect(reserve.hasRoom(6 * MIB)).toBe(true);
    expect(reserve.hasRoom(6 * MIB + 1)).toBe(false);
    // Asking set nothing aside.
    admitNow(reserve, 6 * MIB);
    expect(reserve.hasRoom(0)).toBe(true);
    expect(reserve.hasRoom(1)).toBe(false);
    c.t += 1000;
    disk.free = 3 * MIB;
    expect(await reserve.hasRoom(0)).toBe(false);
    // A failing statfs is room, as for deliveries.
    c.t += 1000;
    disk.fail = new Error("statfs: EIO");
    expect(await reserve.hasRoom(100 * MIB)).toBe(true);
  });

  it("ages the measurement by a monotonic clock: the wall clock stepped back does not freeze it", async () => {
    const disk = fakeDisk(100 * MIB);
    // The default clock, with a short age so the test need not wait a second.
    const reserve = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { maxAgeMs: 20 });
    await reserve.admit(0);
    expect(disk.calls).toBe(1);
    const real = Date.now();
    const stepped = vi.spyOn(Date, "now").mockImplementation(() => real - 3_600_000);
    try {
      await new Promise((resolve) => setTimeout(resolve, 40));
      const waiting = reserve.admit(0);
      expect(waiting).toBeInstanceOf(Promise);
      await waiting;
      expect(disk.calls).toBe(2);
    } finally {
      stepped.mockRestore();
    }
    // An injected clock that goes back counts the measurement as stale, not as fresh for the step.
    const c = clock();
    const other = new SpaceReserve("/x", 4 * MIB, disk.measure, silentLogger, { now: c.now });
    await other.admit(0);
    c.t -= 3_600_000;
    const again = other.admit(0);
    expect(again).toBeInstanceOf(Promise);
    await again;
    expect(disk.calls).toBe(4);
  });

  it("keeps by default at most a sixteenth of the file system; a reserve that was set is kept as set", async () => {
    // A 64 MiB file system, 32 MiB free: the 64 MiB default would refuse everything.
    const disk = fakeDisk(32 * MIB, 4096, 64 * MIB);
    const fitted = new SpaceReserve("/x", 64 * MIB, disk.measure, silentLogger, { now: clock().now, fitToDisk: true });
    expect(await fitted.hasRoom(28 * MIB)).toBe(true);
    expect(fitted.kept).toBe(4 * MIB);
    expect(fitted.hasRoom(28 * MIB + 1)).toBe(false);
    // On a large one the default stays 64 MiB.
    const large = new SpaceReserve("/x", 64 * MIB, fakeDisk(32 * MIB, 4096, 2048 * MIB).measure, silentLogger, { now: clock().now, fitToDisk: true });
    expect(await large.hasRoom(0)).toBe(false);
    expect(large.kept).toBe(64 * MIB);
    const set = new SpaceReserve("/x", 64 * MIB, disk.measure, silentLogger, { now: clock().now });
    await expect(Promise.resolve().then(() => set.admit(0))).rejects.toSatisfy(noSpace);
    expect(set.kept).toBe(64 * MIB);
  });

  it("lets mail already acknowledged through the store below the reserve: deliveries and enqueues with accepted: true", async () => {
    const root = await tempRoot("accepted");
    const full = await fsAdapter.open(`maildir:${join(root, "a")}`, { min_free_mb: 2 ** 30, fsync: false });
    const small = "Subject: bounce\r\n\r\nx\r\n";
    const large = `Subject: large\r\n\r\n${"y".repeat(200_000)}\r\n`;
    expect(await full.hasRoomFor?.(0)).toBe(false);
    await expect(full.deliver(["a@example.test"], text(small))).rejects.toSatisfy(noSpace);
    await full.deliver(["a@example.test"], text(small), { accepted: true });
    await full.deliver(["a@example.test", "b@example.test"], text(large), { accepted: true });
    const item = await full.queue.enqueue({ sender: "", recipients: ["c@far.test"] }, text(large), { accepted: true });
    expect(item.size).toBe(large.length);
    expect((await full.mailbox("a@example.test").list()).map((m) => m.size)).toEqual([small.length, large.length]);
    await expect(full.queue.enqueue({ sender: "a@example.test", recipients: ["c@far.test"] }, text(small))).rejects.toSatisfy(noSpace);
    expect(await full.queue.list()).toHaveLength(1);
    await full.close();
    // With room, hasRoomFor says so (the default reserve on the test machine's disk).
    const roomy = await fsAdapter.open(`maildir:${join(root, "b")}`, { fsync: false });
    expect(await roomy.hasRoomFor?.(1000)).toBe(true);
    await roomy.close();
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
