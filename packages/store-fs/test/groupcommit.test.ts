import { describe, expect, it } from "vitest";
import { readdirSync, readlinkSync, statSync } from "node:fs";
import { link, mkdir, readdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fromBytes } from "@mailroom/store";
import { createFsStore, locateMailbox } from "../src/index.js";
import { DirSyncs, GroupCommit } from "../src/groupcommit.js";
import { fsyncDir } from "../src/fsutil.js";
import { tempRoot } from "./helpers.js";

const root = await tempRoot("groupcommit");
let n = 0;
const fresh = () => join(root, `ns${++n}`);

interface Gate {
  readonly promise: Promise<void>;
  open(): void;
  fail(error: Error): void;
}

function gate(): Gate {
  let open!: () => void;
  let fail!: (error: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    open = res;
    fail = rej;
  });
  return { promise, open, fail };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A flush whose every run waits until the test opens (or fails) its gate. */
function controlledFlush() {
  const runs: Gate[] = [];
  const flush = () => {
    const g = gate();
    runs.push(g);
    return g.promise;
  };
  return { runs, flush };
}

describe("group commit", () => {
  it("runs one flush for a first caller at once, and one more for everyone who came while it ran", async () => {
    const c = controlledFlush();
    const group = new GroupCommit(c.flush);
    const settled: string[] = [];
    const first = group.sync().then(() => settled.push("first"));
    expect(c.runs).toHaveLength(1);
    // These arrive while flush 1 is in flight: it may have started before their change, so they must
    // not be satisfied by it.
    const later = Array.from({ length: 10 }, (_, i) => group.sync().then(() => settled.push(`later${i}`)));
    expect(c.runs).toHaveLength(1);
    c.runs[0]!.open();
    await first;
    await tick();
    expect(settled).toEqual(["first"]);
    expect(c.runs).toHaveLength(2);
    c.runs[1]!.open();
    await Promise.all(later);
    expect(settled).toHaveLength(11);
    expect(c.runs).toHaveLength(2);
    expect(group.idle).toBe(true);
  });

  it("settles every caller only with a flush that started after its call", async () => {
    const c = controlledFlush();
    let finished = 0;
    const group = new GroupCommit(async () => {
      await c.flush();
      finished++;
    });
    const calls: Promise<{ startedBefore: number; settledBy: number }>[] = [];
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 3; i++) {
        const startedBefore = c.runs.length;
        // settledBy: index of the flush that had just finished when this caller was released.
        calls.push(group.sync().then(() => ({ startedBefore, settledBy: finished - 1 })));
      }
      c.runs[c.runs.length - 1]!.open();
      await tick();
    }
    while (!group.idle) {
      c.runs[c.runs.length - 1]!.open();
      await tick();
    }
    for (const { startedBefore, settledBy } of await Promise.all(calls)) {
      expect(settledBy).toBeGreaterThanOrEqual(startedBefore);
    }
    expect(c.runs.length).toBeLessThan(18);
  });

  it("rejects exactly the callers of the flush that failed; the next batch still runs", async () => {
    const c = controlledFlush();
    const group = new GroupCommit(c.flush);
    const a = group.sync();
    const b = [group.sync(), group.sync()];
    c.runs[0]!.open();
    await a;
    await tick();
    const d = [group.sync(), group.sync()]; // wait for flush 3, behind the failing flush 2
    c.runs[1]!.fail(new Error("EIO"));
    for (const p of b) await expect(p).rejects.toThrow("EIO");
    await tick();
    expect(c.runs).toHaveLength(3);
    c.runs[2]!.open();
    await expect(Promise.all(d)).resolves.toBeDefined();
    expect(group.idle).toBe(true);
  });

  it("DirSyncs makes each caller's directory entry part of a completed directory fsync", async () => {
    const dir = join(fresh(), "new");
    await mkdir(dir, { recursive: true });
    const flushed: Set<string>[] = [];
    const syncs = new DirSyncs({ fsync: true }, async (path) => {
      const snapshot = new Set(readdirSync(path));
      await fsyncDir(path, { fsync: true });
      flushed.push(snapshot);
    });
    const source = join(dir, "..", "source");
    await writeFile(source, "x");
    await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const name = `m${i}`;
        await link(source, join(dir, name));
        await syncs.sync(dir);
        // At resolve time a flush that saw the entry has completed.
        expect(flushed.some((s) => s.has(name))).toBe(true);
      }),
    );
    expect(flushed.length).toBeGreaterThan(1);
    expect(flushed.length).toBeLessThan(100);
    expect(syncs.active).toBe(0);
  });

  it("DirSyncs rejects only the waiters of a failing directory fsync, per directory", async () => {
    const base = fresh();
    let badFlushes = 0;
    const syncs = new DirSyncs({ fsync: true }, async (path) => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (path.endsWith("bad") && ++badFlushes === 1) throw Object.assign(new Error("EIO: i/o error"), { code: "EIO" });
    });
    const good = Array.from({ length: 5 }, () => syncs.sync(join(base, "good")));
    // The first "bad" caller starts the failing flush; the four behind it wait for the next one.
    const bad = Array.from({ length: 5 }, () => syncs.sync(join(base, "bad")));
    const results = await Promise.allSettled([...good, ...bad]);
    expect(results.map((r) => r.status)).toEqual([
      ...Array<string>(5).fill("fulfilled"),
      "rejected",
      ...Array<string>(4).fill("fulfilled"),
    ]);
    expect(badFlushes).toBe(2);
    expect(syncs.active).toBe(0);
  });

  it("DirSyncs keeps an idle directory's descriptor for a moment, and closes it on close()", async () => {
    const dir = join(fresh(), "new");
    await mkdir(dir, { recursive: true });
    const syncs = new DirSyncs({ fsync: true });
    await syncs.sync(dir);
    await tick();
    // Idle, but still known: the next delivery reuses the open descriptor.
    expect(syncs.busy).toBe(0);
    expect(syncs.active).toBe(1);
    await syncs.sync(dir);
    syncs.close();
    expect(syncs.active).toBe(0);
  });

  it.skipIf(process.platform !== "linux")("DirSyncs does not sync a directory that was replaced while its descriptor lingered", async () => {
    const box = fresh();
    const dir = join(box, "new");
    await mkdir(dir, { recursive: true });
    const syncs = new DirSyncs({ fsync: true });
    await syncs.sync(dir);
    await tick();
    // An operator moves the mailbox away and a new one appears at the same path.
    await rename(box, `${box}.old`);
    await mkdir(dir, { recursive: true });
    await syncs.sync(dir);
    // The old descriptor's close went to the thread pool alongside the new open; give it a moment.
    await new Promise((resolve) => setTimeout(resolve, 50));
    const open = readdirSync("/proc/self/fd").map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return "";
      }
    });
    expect(open).not.toContain(`${box}.old/new`);
    expect(open).toContain(dir);
    syncs.close();
  });

  it("with fsync off, DirSyncs never flushes", async () => {
    let calls = 0;
    const syncs = new DirSyncs({ fsync: false }, async () => {
      calls++;
    });
    await syncs.sync("/nonexistent");
    expect(calls).toBe(0);
  });
});

describe("group commit in the store (fsync on)", () => {
  it("many concurrent deliveries and appends all resolve, are on disk at resolve time, and are all listed", async () => {
    const ns = fresh();
    const store = await createFsStore({ root: ns, hostname: "gc.host" });
    const id = "gc@example.test";
    const newDir = join(locateMailbox(ns, id).dir, "new");
    const box = store.mailbox(id);
    const body = (i: number) => fromBytes(`Subject: ${i}\r\n\r\n${"x".repeat(i * 37)}\r\n`);
    const uids = await Promise.all(
      Array.from({ length: 120 }, async (_, i) => {
        const uid =
          i % 2 === 0
            ? (await store.deliver([id], body(i)))[0]!.message.uid
            : (await box.append(body(i))).uid;
        // Synchronously at resolve time: the name is in new/ and the file is complete.
        const name = readdirSync(newDir).find((f) => f.startsWith(`${uid},`));
        expect(name).toBeDefined();
        expect(statSync(join(newDir, name!)).size).toBe(Buffer.byteLength(`Subject: ${i}\r\n\r\n${"x".repeat(i * 37)}\r\n`));
        return uid;
      }),
    );
    expect(new Set(uids).size).toBe(120);
    const listed = await box.list();
    expect(listed.map((m) => m.uid).sort()).toEqual([...uids].sort());
    expect(await readdir(join(locateMailbox(ns, id).dir, "tmp"))).toEqual([]);
    await store.close();
  });

  it("a multi-mailbox delivery resolves once every mailbox's new/ is synced", async () => {
    const ns = fresh();
    const store = await createFsStore({ root: ns, hostname: "gc.host" });
    const ids = ["a@example.test", "b@example.test", "c@other.test"];
    const results = await Promise.all(
      Array.from({ length: 20 }, () => store.deliver(ids, fromBytes("Subject: all\r\n\r\nhi\r\n"))),
    );
    for (const [k, id] of ids.entries()) {
      const names = readdirSync(join(locateMailbox(ns, id).dir, "new"));
      for (const r of results) expect(names.some((f) => f.startsWith(`${r[k]!.message.uid},`))).toBe(true);
      expect(await store.mailbox(id).list()).toHaveLength(20);
    }
    await store.close();
  });
});

describe("writing message files", () => {
  it("delivers a message that outgrows the delivery log exactly, from a source that reuses its buffer", async () => {
    const store = await createFsStore({ root: fresh(), hostname: "gc.host" });
    // Lines of one letter each; the sizes cross the log's 32 KiB limit in the third chunk.
    const part = (letter: string, octets: number) => `${letter.repeat(78)}\r\n`.repeat(octets / 80);
    const parts = [part("A", 8_000), part("B", 8_000), part("C", 40_000), part("D", 24_000), part("E", 4_000)];
    async function* reusing(): AsyncGenerator<Uint8Array> {
      const buffer = new Uint8Array(48_000);
      for (const text of parts) {
        const { written } = new TextEncoder().encodeInto(text, buffer);
        yield buffer.subarray(0, written);
      }
    }
    const [delivered] = await store.deliver(["big@example.test"], reusing());
    const chunks: Uint8Array[] = [];
    for await (const chunk of await store.mailbox("big@example.test").read(delivered!.message.uid)) chunks.push(chunk);
    expect(Buffer.concat(chunks).toString("latin1")).toBe(parts.join(""));
    await store.close();
  });

  it("stores a message streamed in many small chunks exactly, even from a source that reuses its buffer", async () => {
    const store = await createFsStore({ root: fresh(), hostname: "gc.host" });
    const line = (i: number) => `X-Line-${String(i).padStart(5, "0")}: ${"y".repeat(40)}\r\n`;
    const expected = Array.from({ length: 3000 }, (_, i) => line(i)).join("");
    async function* reusing(): AsyncGenerator<Uint8Array> {
      const buffer = new Uint8Array(64);
      const encoder = new TextEncoder();
      for (let i = 0; i < 3000; i++) {
        const { written } = encoder.encodeInto(line(i), buffer);
        yield buffer.subarray(0, written);
      }
    }
    const box = store.mailbox("chunks@example.test");
    const info = await box.append(reusing());
    expect(info.size).toBe(expected.length);
    const chunks: Uint8Array[] = [];
    for await (const chunk of await box.read(info.uid)) chunks.push(chunk);
    expect(Buffer.concat(chunks).toString("latin1")).toBe(expected);
    // 3000 × 52 octets: read back in chunks of up to 256 KiB, i.e. one.
    expect(chunks.length).toBe(1);
    await store.close();
  });
});
