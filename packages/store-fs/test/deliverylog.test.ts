// The delivery log (group commit of small messages' files): what it leaves on disk while it collects,
// that close and expunge retire it, and what a replay does with the log of a process that stopped.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, statSync, truncateSync, unlinkSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { processStamp, processStampOf, readAll, silentLogger, type Store } from "@mailroom/store";
import { createFsStore } from "../src/index.js";
import { DeliveryLog, LOG_DIR } from "../src/deliverylog.js";
import { messageName, newBase } from "../src/filenames.js";
import { mailModesOf } from "../src/fsutil.js";
import { FileThread } from "../src/filethread.js";
import { encodeRecord, readRecords, type LogOwner } from "../src/logformat.js";
import { recoverDeliveryLogs, retryLeftLogs } from "../src/logrecovery.js";
import { BulkSync, movedToCur } from "../src/syncfs.js";
import { tempRoot, text } from "./helpers.js";

const root = await tempRoot("deliverylog");
let n = 0;
const freshRoot = (): string => join(root, `r${n++}`);

/** Whether the stores the tests open write their logs with the file thread; set per run below. */
const mode = { fileThread: true };

/** A store whose log is retired only on close or expunge, so a test can look at it first. */
const open = (dir: string, deliveryLogBytes?: number): Promise<Store> =>
  createFsStore({
    root: dir,
    hostname: "test.host",
    deliveryLogMs: 600_000,
    fileThread: mode.fileThread,
    ...(deliveryLogBytes === undefined ? {} : { deliveryLogBytes }),
  });

const logsIn = (dir: string): string[] =>
  existsSync(join(dir, LOG_DIR)) ? readdirSync(join(dir, LOG_DIR)).filter((name) => name.endsWith(".log")) : [];

/** Delivery records a replay would find in the logs of `dir` now (a retired log file kept for reuse has none). */
function pendingIn(dir: string): number {
  let count = 0;
  for (const name of logsIn(dir)) {
    const fd = openSync(join(dir, LOG_DIR, name), "r");
    try {
      for (const { header } of readRecords(fd)) if (header.kind === "delivery") count++;
    } finally {
      closeSync(fd);
    }
  }
  return count;
}

/**
 * A DeliveryLog used directly (retired only when asked, written the way the current test mode says),
 * and a delivery of one two-octet message to alice that resolves once its record is durable.
 */
function directLog(dir: string, options: { reuseWithinMs?: number; bulk?: BulkSync } = {}) {
  const { bulk = new BulkSync(() => undefined), ...rest } = options;
  const log = new DeliveryLog(dir, { fsync: true }, bulk, silentLogger, {
    maxMessageBytes: 32_768,
    checkpointMs: 600_000,
    ...rest,
    ...(mode.fileThread ? { thread: () => FileThread.shared() } : {}),
  });
  const maildir = join(dir, "example.test", "alice");
  mkdirSync(join(maildir, "new"), { recursive: true });
  const deliver = async (): Promise<void> => {
    const name = messageName(newBase("test.host"), 2, 2, null);
    writeFileSync(join(maildir, "new", name), "hi");
    (await log.begin([join(maildir, "new", name)], Date.now(), [Buffer.from("hi")]).durable)();
  };
  return { log, deliver };
}

/** Delivers one message and expunges it, which retires the log; returns the name of the file kept. */
async function deliverAndRetire(store: Store, dir: string): Promise<string> {
  const [first] = await store.deliver(["alice@example.test"], text("Subject: a\r\n\r\n1\r\n"));
  const [log] = logsIn(dir);
  expect(await expungeAlice(store, first!.message.uid)).toBe(1);
  expect(logsIn(dir)).toEqual([log]);
  return log!;
}

const bodyOf = async (store: Store, mailbox: string, uid: string): Promise<string> =>
  new TextDecoder().decode(await readAll(await store.mailbox(mailbox).read(uid)));

/** The message files of a maildir (new/ and cur/), by path. */
/** Expunges `uid` from alice's mailbox under a lease of its own, as a POP3 QUIT would; returns how many went. */
async function expungeAlice(store: Store, uid: string): Promise<number> {
  const mailbox = store.mailbox("alice@example.test");
  const lease = await mailbox.acquireLease({ holder: "test", ttlMs: 30_000 });
  try {
    return await mailbox.expunge([uid], lease);
  } finally {
    await lease.release();
  }
}

function messageFiles(dir: string, mailbox: string): string[] {
  const [local, domain] = mailbox.split("@") as [string, string];
  const maildir = join(dir, domain, local);
  return ["new", "cur"].flatMap((sub) => readdirSync(join(maildir, sub)).map((name) => join(maildir, sub, name)));
}

/** Delivers `bodies` to alice, then keeps a copy of the log as a crashed process would have left it. */
async function deliverAndKeepLog(dir: string, bodies: string[], to = ["alice@example.test"]) {
  const store = await open(dir);
  const uids: string[][] = [];
  for (const body of bodies) uids.push((await store.deliver(to, text(body))).map((d) => d.message.uid));
  const logs = logsIn(dir);
  expect(logs).toHaveLength(1);
  const saved = join(dir, "saved.log");
  copyFileSync(join(dir, LOG_DIR, logs[0]!), saved);
  const listed = await store.mailbox(to[0]!).list();
  await store.close();
  return { uids, listed, restoreLog: () => copyFileSync(saved, join(dir, LOG_DIR, logs[0]!)), logPath: join(dir, LOG_DIR, logs[0]!) };
}

/** Rewrites a log's first record (its owner), keeping the records after it and the file's times. */
function replaceOwner(logPath: string, owner: LogOwner): void {
  const bytes = readFileSync(logPath);
  const { atime, mtime } = statSync(logPath);
  const ownerLength = 12 + bytes.readUInt32LE(4) + 4; // prefix, header, no body, checksum
  writeFileSync(logPath, Buffer.concat([...encodeRecord(owner, []), bytes.subarray(ownerLength)]));
  utimesSync(logPath, atime, mtime);
}

/** The same records in the first version's format: magic "MRLG" and a SHA-256 instead of the CRC-32. */
function asFirstVersion(log: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < log.length; ) {
    const length = 12 + log.readUInt32LE(at + 4) + log.readUInt32LE(at + 8);
    const record = Buffer.from(log.subarray(at, at + length));
    record.write("MRLG", 0, "latin1");
    out.push(record, createHash("sha256").update(record).digest());
    at += length + 4;
  }
  return Buffer.concat(out);
}

const recover = (dir: string, boot: string) =>
  recoverDeliveryLogs({ root: dir, policy: { fsync: true }, mailModes: mailModesOf(0o700), logger: silentLogger, bulk: new BulkSync(() => undefined) }, boot);

// Everything the log promises holds whether its appends (and single-mailbox renames) run on the file
// thread or through the thread pool: the same tests, once each way.
describe.each([
  { name: "written by the file thread", fileThread: true },
  { name: "written through the thread pool", fileThread: false },
])("delivery log, $name", ({ fileThread }) => {
  beforeAll(async () => {
    mode.fileThread = fileThread;
    // Started up front, so that the very first log is already the thread's.
    if (fileThread) expect(await FileThread.start()).not.toBeNull();
  });

  it("keeps a record of each small delivery until close, which makes the files durable and deletes it", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const [first] = await store.deliver(["alice@example.test"], text("Subject: one\r\n\r\nhi\r\n"));
    await store.deliver(["alice@example.test", "bob@example.test"], text("Subject: two\r\n\r\nhi\r\n"));
    expect(logsIn(dir)).toHaveLength(1);
    expect(await bodyOf(store, "alice@example.test", first!.message.uid)).toBe("Subject: one\r\n\r\nhi\r\n");
    await store.close();
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test")).toHaveLength(2);
    expect(messageFiles(dir, "bob@example.test")).toHaveLength(1);
  });

  it("leaves messages larger than delivery_log_bytes out of the log (fsynced on their own)", async () => {
    const dir = freshRoot();
    const store = await open(dir, 1024);
    await store.deliver(["alice@example.test"], text(`Subject: big\r\n\r\n${"x".repeat(2048)}\r\n`));
    expect(logsIn(dir)).toEqual([]);
    await store.deliver(["alice@example.test"], text("Subject: small\r\n\r\nhi\r\n"));
    expect(logsIn(dir)).toHaveLength(1);
    await store.close();
  });

  it("does not log at all with delivery_log_bytes = 0 or fsync off", async () => {
    for (const options of [{ deliveryLogBytes: 0 }, { fsync: false }]) {
      const dir = freshRoot();
      const store = await createFsStore({ root: dir, deliveryLogMs: 600_000, ...options });
      await store.deliver(["alice@example.test"], text("Subject: x\r\n\r\nhi\r\n"));
      expect(logsIn(dir)).toEqual([]);
      await store.close();
    }
  });

  it("retires the log before an expunge removes anything", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const [d] = await store.deliver(["alice@example.test"], text("Subject: x\r\n\r\nhi\r\n"));
    expect(logsIn(dir)).toHaveLength(1);
    expect(pendingIn(dir)).toBe(1);
    expect(await expungeAlice(store, d!.message.uid)).toBe(1);
    // Retired: the file is kept for the next log, but holds nothing a replay would bring back.
    expect(pendingIn(dir)).toBe(0);
    await store.close();
    expect(logsIn(dir)).toEqual([]);
  });

  it("lets an expunge of mail whose records are retired go ahead without retiring the log of newer mail", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const [old] = await store.deliver(["alice@example.test"], text("Subject: old\r\n\r\nhi\r\n"));
    // Closing retires the log: the old message is durable in its Maildir and in no log.
    await store.close();
    expect(logsIn(dir)).toEqual([]);

    const reopened = await open(dir);
    const [fresh] = await reopened.deliver(["alice@example.test"], text("Subject: new\r\n\r\nhi\r\n"));
    expect(logsIn(dir)).toHaveLength(1);
    // The old message's record is gone with the first log: nothing to wait for, the new log stays.
    expect(await expungeAlice(reopened, old!.message.uid)).toBe(1);
    expect(logsIn(dir)).toHaveLength(1);
    expect(pendingIn(dir)).toBe(1);
    // The new message's record is in that log: it is retired first.
    expect(await expungeAlice(reopened, fresh!.message.uid)).toBe(1);
    expect(pendingIn(dir)).toBe(0);
    await reopened.close();
  });

  it("lets checkpoints asked for together share one retirement", async () => {
    const dir = freshRoot();
    const syncs: number[] = [];
    const bulk = new BulkSync(() => undefined);
    const original = bulk.sync.bind(bulk);
    bulk.sync = (files, dirs) => {
      syncs.push(files.length);
      return original(files, dirs);
    };
    const { log, deliver } = directLog(dir, { bulk });
    // A checkpoint right after each of ten deliveries, as POP3 QUITs under load ask for them: the first
    // starts a retirement, the others share the next one, which takes every log sealed by then.
    const work: Promise<void>[] = [];
    for (let i = 0; i < 10; i++) work.push(deliver(), log.checkpoint());
    await Promise.all(work);
    expect(syncs.length).toBeLessThanOrEqual(2);
    expect(syncs.reduce((a, b) => a + b, 0)).toBe(10);
    expect(pendingIn(dir)).toBe(0);
    await log.close();
    expect(logsIn(dir)).toEqual([]);
  });

  it("after a killed process (same boot): makes the files durable, rewrites nothing, restores nothing deleted since", async () => {
    const dir = freshRoot();
    const { restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n2\r\n"]);
    restoreLog();
    const [kept, deleted] = messageFiles(dir, "alice@example.test").sort();
    unlinkSync(deleted!); // a POP3 client's DELE after the crash
    writeFileSync(kept!, "changed by someone else\r\n"); // not ours to judge within one boot
    await recover(dir, readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim());
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test")).toEqual([kept]);
    expect(readFileSync(kept!, "utf8")).toBe("changed by someone else\r\n");
  });

  it("after a power cut (another boot): writes back missing, short and damaged files, where they are now", async () => {
    const dir = freshRoot();
    const bodies = ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n22\r\n", "Subject: c\r\n\r\n333\r\n", "Subject: d\r\n\r\n4444\r\n"];
    const { uids, listed, restoreLog } = await deliverAndKeepLog(dir, bodies);
    restoreLog();
    const files = messageFiles(dir, "alice@example.test");
    const fileOf = (uid: string) => files.find((f) => f.includes(uid))!;
    unlinkSync(fileOf(uids[0]![0]!));
    truncateSync(fileOf(uids[1]![0]!), 3);
    writeFileSync(fileOf(uids[2]![0]!), "Subject: c\r\n\r\nXXX\r\n");
    // A reader moved the fourth to cur/ with a flag; the power cut also damaged it there.
    const moved = fileOf(uids[3]![0]!).replace(`${"/new/"}`, "/cur/") + ":2,S";
    renameSync(fileOf(uids[3]![0]!), moved);
    writeFileSync(moved, "");

    await recover(dir, "another-boot");
    expect(logsIn(dir)).toEqual([]);
    expect(existsSync(moved)).toBe(true);
    const store = await open(dir);
    const after = await store.mailbox("alice@example.test").list();
    expect(after.map((m) => [m.uid, m.size, m.receivedAt]).sort()).toEqual(listed.map((m) => [m.uid, m.size, m.receivedAt]).sort());
    for (const [i, body] of bodies.entries()) expect(await bodyOf(store, "alice@example.test", uids[i]![0]!)).toBe(body);
    expect(statSync(fileOf(uids[0]![0]!)).mtimeMs).toBeCloseTo(listed.find((m) => m.uid === uids[0]![0])!.receivedAt, -1);
    await store.close();
  });

  it("after a power cut: repairs a file a reader renamed (other size fields, mbsync's ,U=) where it is, without a second copy", async () => {
    const dir = freshRoot();
    const bodies = ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n22\r\n"];
    const { uids, listed, restoreLog } = await deliverAndKeepLog(dir, bodies);
    restoreLog();
    const files = messageFiles(dir, "alice@example.test");
    const fileOf = (uid: string) => files.find((f) => f.includes(uid))!;
    // Dovecot found the first one cut short and renamed it to its real size; mbsync added its UID to
    // the second in new/.
    const first = fileOf(uids[0]![0]!);
    truncateSync(first, 3);
    const firstNow = first.replace("/new/", "/cur/").replace(/,S=\d+,W=\d+$/, ",S=3:2,S");
    renameSync(first, firstNow);
    const second = fileOf(uids[1]![0]!);
    writeFileSync(second, "");
    const secondNow = second.replace(/,W=(\d+)$/, ",W=$1,U=7");
    renameSync(second, secondNow);

    await recover(dir, "another-boot");
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test").sort()).toEqual([firstNow, secondNow].sort());
    expect(readFileSync(firstNow, "utf8")).toBe(bodies[0]);
    expect(readFileSync(secondNow, "utf8")).toBe(bodies[1]);
    const store = await open(dir);
    expect((await store.mailbox("alice@example.test").list()).map((m) => m.uid).sort()).toEqual(listed.map((m) => m.uid).sort());
    await store.close();
  });

  it("after a power cut: restores every recipient of a multi-recipient delivery", async () => {
    const dir = freshRoot();
    const { uids, restoreLog } = await deliverAndKeepLog(dir, ["Subject: both\r\n\r\nhi\r\n"], ["alice@example.test", "bob@example.test"]);
    restoreLog();
    for (const box of ["alice@example.test", "bob@example.test"]) for (const f of messageFiles(dir, box)) unlinkSync(f);
    await recover(dir, "another-boot");
    const store = await open(dir);
    expect(await bodyOf(store, "alice@example.test", uids[0]![0]!)).toBe("Subject: both\r\n\r\nhi\r\n");
    expect(await bodyOf(store, "bob@example.test", uids[0]![1]!)).toBe("Subject: both\r\n\r\nhi\r\n");
    await store.close();
  });

  it("ignores a torn or damaged tail: those records were never acknowledged", async () => {
    const dir = freshRoot();
    const { uids, logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n2\r\n"]);
    for (const f of messageFiles(dir, "alice@example.test")) unlinkSync(f);
    restoreLog();
    truncateSync(logPath, statSync(logPath).size - 5);
    await recover(dir, "another-boot");
    const files = messageFiles(dir, "alice@example.test");
    expect(files).toHaveLength(1);
    expect(files[0]).toContain(uids[0]![0]!);

    // A flipped byte in a record's body fails its checksum: that record and everything after it are skipped.
    for (const f of messageFiles(dir, "alice@example.test")) unlinkSync(f);
    restoreLog();
    const bytes = readFileSync(logPath);
    const at = bytes.indexOf("Subject: a");
    bytes[at] = 0x73;
    writeFileSync(logPath, bytes);
    await recover(dir, "another-boot");
    expect(messageFiles(dir, "alice@example.test")).toEqual([]);
  });

  it("replays a log written by the first version (records ending in a SHA-256, magic MRLG)", async () => {
    const dir = freshRoot();
    const { uids, logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n2\r\n"]);
    for (const f of messageFiles(dir, "alice@example.test")) unlinkSync(f);
    restoreLog();
    writeFileSync(logPath, asFirstVersion(readFileSync(logPath)));
    await recover(dir, "another-boot");
    expect(logsIn(dir)).toEqual([]);
    const store = await open(dir);
    expect(await bodyOf(store, "alice@example.test", uids[0]![0]!)).toBe("Subject: a\r\n\r\n1\r\n");
    expect(await bodyOf(store, "alice@example.test", uids[1]![0]!)).toBe("Subject: b\r\n\r\n2\r\n");
    await store.close();
  });

  it("leaves the log of a process that still runs alone, until nothing has written to it for five minutes", async () => {
    const dir = freshRoot();
    const boot = "this-boot";
    const { uids, logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n"]);
    for (const f of messageFiles(dir, "alice@example.test")) unlinkSync(f);
    restoreLog();
    // The same records, but owned by the parent of this test process: alive, and not us.
    const bytes = readFileSync(logPath);
    const ownerLength = 12 + bytes.readUInt32LE(4) + 4; // prefix, header, no body, checksum
    const owner = Buffer.concat(encodeRecord({ kind: "owner", pid: process.ppid, boot, started: 0 }, []));
    writeFileSync(logPath, Buffer.concat([owner, bytes.subarray(ownerLength)]));
    await recover(dir, boot);
    expect(logsIn(dir)).toHaveLength(1);
    expect(messageFiles(dir, "alice@example.test")).toEqual([]);
    // Untouched for ten minutes: its pid now names some other process, the log is abandoned.
    const old = new Date(Date.now() - 10 * 60_000);
    utimesSync(logPath, old, old);
    await recover(dir, boot);
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test")).toEqual([]); // same boot: made durable, nothing rewritten
    // After a reboot the same log restores the file.
    restoreLog();
    writeFileSync(logPath, Buffer.concat([owner, bytes.subarray(ownerLength)]));
    await recover(dir, "next-boot");
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test")[0]).toContain(uids[0]![0]!);
  });

  it("without a boot id (no /proc) leaves a running owner's log alone until it has been quiet for five minutes", async () => {
    // A second process opening the store (a worker, an admin command) must not replay and unlink the
    // log a running server still appends to: that server's later records would be in no file.
    const dir = freshRoot();
    const { logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n"]);
    restoreLog();
    replaceOwner(logPath, { kind: "owner", pid: process.ppid, boot: "", started: 0 });
    expect(await recover(dir, "")).toBe(1);
    expect(logsIn(dir)).toHaveLength(1);
    const old = new Date(Date.now() - 10 * 60_000);
    utimesSync(logPath, old, old);
    expect(await recover(dir, "")).toBe(0);
    expect(logsIn(dir)).toEqual([]);
  });

  it("judges an owner in this pid namespace by its pid and start time, however quiet its log", async () => {
    const dir = freshRoot();
    const me = processStamp()!;
    const { logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n"]);
    restoreLog();
    // Owned by the parent of this test process: alive, even after ten quiet minutes.
    const parent = processStampOf(process.ppid)!;
    replaceOwner(logPath, { kind: "owner", pid: parent.pid, boot: parent.boot, started: 0, pidns: parent.pidns, start: parent.start });
    const old = new Date(Date.now() - 10 * 60_000);
    utimesSync(logPath, old, old);
    expect(await recover(dir, me.boot)).toBe(1);
    expect(logsIn(dir)).toHaveLength(1);
    // The same pid started at another time: an earlier process, gone; replayed at once.
    replaceOwner(logPath, { kind: "owner", pid: me.pid, boot: me.boot, started: 0, pidns: me.pidns, start: "1" });
    expect(await recover(dir, me.boot)).toBe(0);
    expect(logsIn(dir)).toEqual([]);
  });

  it("leaves the log of a process in another pid namespace (container) alone until it has been quiet for five minutes", async () => {
    const dir = freshRoot();
    const me = processStamp()!;
    const { logPath, restoreLog } = await deliverAndKeepLog(dir, ["Subject: a\r\n\r\n1\r\n"]);
    restoreLog();
    // Its pid is free here, which proves nothing about a process another namespace numbers.
    replaceOwner(logPath, { kind: "owner", pid: 2 ** 22 + 1, boot: me.boot, started: 0, pidns: "pid:[1]", start: "5" });
    expect(await recover(dir, me.boot)).toBe(1);
    expect(logsIn(dir)).toHaveLength(1);
    // A store opened meanwhile tries again every so often, and replays it once it has been quiet.
    const retry = retryLeftLogs({ root: dir, policy: { fsync: true }, mailModes: mailModesOf(0o700), logger: silentLogger, bulk: new BulkSync(() => undefined) }, 20);
    try {
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(logsIn(dir)).toHaveLength(1);
      const old = new Date(Date.now() - 10 * 60_000);
      utimesSync(logPath, old, old);
      await vi.waitFor(() => expect(logsIn(dir)).toEqual([]), { timeout: 5_000 });
    } finally {
      retry.stop();
    }
  });

  it("refuses a delivery whose record cannot be written, and publishes nothing", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    // Where the log's directory should go, a file: the log cannot even be created.
    writeFileSync(join(dir, LOG_DIR), "in the way");
    const outcomes = await Promise.allSettled(
      Array.from({ length: 3 }, (_, i) => store.deliver(["alice@example.test"], text(`Subject: ${i}\r\n\r\nhi\r\n`))),
    );
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "rejected", "rejected"]);
    for (const sub of ["new", "cur", "tmp"]) expect(readdirSync(join(dir, "example.test", "alice", sub))).toEqual([]);
    unlinkSync(join(dir, LOG_DIR));
    // The next log file works again.
    const [later] = await store.deliver(["alice@example.test"], text("Subject: later\r\n\r\nhi\r\n"));
    await store.close();
    const reopened = await open(dir);
    expect(await bodyOf(reopened, "alice@example.test", later!.message.uid)).toBe("Subject: later\r\n\r\nhi\r\n");
    await reopened.close();
  });

  it("keeps every delivery while logs are retired every few milliseconds and expunges run alongside", async () => {
    const dir = freshRoot();
    const store = await createFsStore({ root: dir, hostname: "test.host", deliveryLogMs: 3, fileThread });
    const boxes = ["a@example.test", "b@example.test", "c@example.test"];
    const delivered: Array<{ box: string; uid: string; body: string }> = [];
    const deliverSome = async (worker: number): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const body = `Subject: ${worker}-${i}\r\n\r\n${"x".repeat((worker * 997 + i * 131) % 3000)}\r\n`;
        const to = [boxes[i % 3]!, ...(i % 4 === 0 ? [boxes[(i + 1) % 3]!] : [])];
        for (const d of await store.deliver(to, text(body))) delivered.push({ box: d.mailbox, uid: d.message.uid, body });
      }
    };
    // Meanwhile c's mail is expunged as it arrives, which retires the log each time.
    const expunged = new Set<string>();
    let running = true;
    const expungeLoop = async (): Promise<void> => {
      const mailbox = store.mailbox("c@example.test");
      while (running) {
        const lease = await mailbox.acquireLease({ holder: "test", ttlMs: 30_000 });
        const uids = (await mailbox.list()).map((m) => m.uid).slice(0, 5);
        if (uids.length > 0) await mailbox.expunge(uids, lease);
        for (const uid of uids) expunged.add(uid);
        await lease.release();
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    };
    const expunging = expungeLoop();
    await Promise.all(Array.from({ length: 8 }, (_, worker) => deliverSome(worker)));
    running = false;
    await expunging;
    await store.close();
    expect(logsIn(dir)).toEqual([]);
    const reopened = await open(dir);
    for (const { box, uid, body } of delivered) {
      if (expunged.has(uid)) continue;
      expect(await bodyOf(reopened, box, uid)).toBe(body);
    }
    const listed = new Set<string>();
    for (const box of boxes) for (const m of await reopened.mailbox(box).list()) listed.add(`${box} ${m.uid}`);
    expect(listed.size).toBe(delivered.filter((d) => !expunged.has(d.uid)).length);
    await reopened.close();
  });

  it("uses a retired log file again, and a replay of it finds only the records written since", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const bodies = ["Subject: a\r\n\r\n1\r\n", "Subject: b\r\n\r\n22\r\n", "Subject: c\r\n\r\n333\r\n"];
    const uids: string[] = [];
    for (const body of bodies) uids.push((await store.deliver(["alice@example.test"], text(body)))[0]!.message.uid);
    const [log] = logsIn(dir);
    const logPath = join(dir, LOG_DIR, log!);
    const firstSize = statSync(logPath).size;
    // The expunge retires the log first; the file stays, its records no longer count.
    expect(await expungeAlice(store, uids[0]!)).toBe(1);
    expect(logsIn(dir)).toEqual([log]);
    expect(pendingIn(dir)).toBe(0);
    const retired = readFileSync(logPath);
    // The next delivery's record goes into the same file, over the old ones.
    const [later] = await store.deliver(["alice@example.test"], text("Subject: d\r\n\r\n4\r\n"));
    expect(logsIn(dir)).toEqual([log]);
    expect(pendingIn(dir)).toBe(1);
    expect(statSync(logPath).size).toBe(firstSize);
    const current = readFileSync(logPath);
    const listed = await store.mailbox("alice@example.test").list();
    await store.close();
    expect(logsIn(dir)).toEqual([]);

    // A power cut now (another boot): the current record is replayed; the older records still in the
    // file are not, so neither the expunged message nor the others' copies come back from it.
    writeFileSync(logPath, current);
    const fileOf = (uid: string) => messageFiles(dir, "alice@example.test").find((f) => f.includes(uid))!;
    unlinkSync(fileOf(later!.message.uid));
    unlinkSync(fileOf(uids[1]!)); // not what a power cut does to a file retired as durable: a marker
    await recover(dir, "another-boot");
    expect(logsIn(dir)).toEqual([]);
    const reopened = await open(dir);
    const after = (await reopened.mailbox("alice@example.test").list()).map((m) => m.uid).sort();
    expect(after).toEqual([uids[2]!, later!.message.uid].sort());
    expect(await bodyOf(reopened, "alice@example.test", later!.message.uid)).toBe("Subject: d\r\n\r\n4\r\n");
    const laterListed = listed.find((m) => m.uid === later!.message.uid)!;
    expect((await reopened.mailbox("alice@example.test").list()).find((m) => m.uid === later!.message.uid)!.receivedAt).toBeCloseTo(laterListed.receivedAt, -1);
    await reopened.close();

    // The file as the retirement left it (a new owner record, nothing after it of that generation):
    // a process that died then left nothing to replay.
    writeFileSync(logPath, retired);
    unlinkSync(fileOf(uids[2]!));
    await recover(dir, "another-boot");
    expect(logsIn(dir)).toEqual([]);
    expect(messageFiles(dir, "alice@example.test").map((f) => f.includes(uids[2]!))).not.toContain(true);
  });

  it("refuses the deliveries of one append, and then starts a new file, when a kept log file has vanished", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const log = await deliverAndRetire(store, dir);
    unlinkSync(join(dir, LOG_DIR, log)); // someone cleaned up .log/ by hand
    await expect(store.deliver(["alice@example.test"], text("Subject: b\r\n\r\n2\r\n"))).rejects.toThrow();
    expect(await store.mailbox("alice@example.test").list()).toEqual([]);
    const [third] = await store.deliver(["alice@example.test"], text("Subject: c\r\n\r\n3\r\n"));
    expect(logsIn(dir)).toHaveLength(1);
    expect(logsIn(dir)).not.toContain(log);
    expect(pendingIn(dir)).toBe(1);
    expect(await bodyOf(store, "alice@example.test", third!.message.uid)).toBe("Subject: c\r\n\r\n3\r\n");
    await store.close();
    expect(logsIn(dir)).toEqual([]);
  });

  it("deletes the retired files it keeps once they have gone unused for a while, with no more mail coming", async () => {
    const dir = freshRoot();
    const { log, deliver } = directLog(dir, { reuseWithinMs: 300 });
    await deliver();
    await log.checkpoint();
    expect(logsIn(dir)).toHaveLength(1);
    expect(pendingIn(dir)).toBe(0);
    await vi.waitFor(() => expect(logsIn(dir)).toEqual([]), { timeout: 5_000 });
    await log.close();
  });

  it("deletes a retired log file that was not used again within a minute, and starts a new one", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const log = await deliverAndRetire(store, dir);
    const now = Date.now();
    const clock = vi.spyOn(Date, "now").mockReturnValue(now + 61_000);
    try {
      const [second] = await store.deliver(["alice@example.test"], text("Subject: b\r\n\r\n2\r\n"));
      const logs = logsIn(dir);
      expect(logs).toHaveLength(2);
      expect(pendingIn(dir)).toBe(1);
      // The old file goes with the next retirement.
      expect(await expungeAlice(store, second!.message.uid)).toBe(1);
      expect(logsIn(dir)).toEqual(logs.filter((name) => name !== log));
    } finally {
      clock.mockRestore();
    }
    await store.close();
    expect(logsIn(dir)).toEqual([]);
  });
});

describe("log records of several generations in one file", () => {
  it("stop at the first record of an earlier generation, even one that starts right where the current ones end", () => {
    const dir = freshRoot();
    mkdirSync(dir, { recursive: true });
    const path = join(dir, "mixed.log");
    const owner = { kind: "owner", pid: 1, boot: "b", started: 0 } as const;
    const delivery = (gen: string | undefined, n: number) =>
      encodeRecord({ kind: "delivery", targets: [`example.test/alice/new/${n}`], mtimeMs: 0, ...(gen === undefined ? {} : { gen }) }, [Buffer.from(`body ${n}`)]);
    const read = (parts: Uint8Array[]): string[] => {
      writeFileSync(path, Buffer.concat(parts));
      const fd = openSync(path, "r");
      try {
        return [...readRecords(fd)].map(({ header }) => (header.kind === "delivery" ? header.targets[0]!.split("/").pop()! : "owner"));
      } finally {
        closeSync(fd);
      }
    };
    expect(read([...encodeRecord({ ...owner, gen: "g2" }, []), ...delivery("g2", 1), ...delivery("g2", 2), ...delivery("g1", 3)])).toEqual(["owner", "1", "2"]);
    expect(read([...encodeRecord({ ...owner, gen: "g2" }, []), ...delivery("g1", 3)])).toEqual(["owner"]);
    // A log from before generations: every record counts.
    expect(read([...encodeRecord(owner, []), ...delivery(undefined, 1), ...delivery(undefined, 2)])).toEqual(["owner", "1", "2"]);
  });
});

/** A store with one message for alice, closed; its root and alice's message files. */
async function oneMessageClosed(): Promise<{ dir: string; files: string[] }> {
  const dir = freshRoot();
  const store = await open(dir);
  await store.deliver(["alice@example.test"], text("Subject: x\r\n\r\nhi\r\n"));
  await store.close();
  return { dir, files: messageFiles(dir, "alice@example.test") };
}

describe("BulkSync", () => {
  it("falls back to one fsync per file when `sync -f` cannot run, and says so once", async () => {
    const { dir, files } = await oneMessageClosed();
    // One that a reader has moved to cur/ since: the fallback finds it there.
    const moved = files[0]!.replace("/new/", "/cur/") + ":2,S";
    renameSync(files[0]!, moved);
    expect(movedToCur(files[0]!)).toBe(moved);
    const warn = vi.fn();
    const bulk = new BulkSync(warn);
    const path = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      await bulk.sync(files, [join(dir, "example.test", "alice", "new")]);
      await bulk.sync([...files, join(dir, "gone")], []);
    } finally {
      process.env.PATH = path;
    }
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]![0])).toContain("sync -f");
  });
});

describe("BulkSync's helper shell", () => {
  // The built package, as a server process would load it (CI builds before it tests).
  const entry = fileURLToPath(new URL("../dist/index.js", import.meta.url));

  it.runIf(process.platform === "linux")("runs every retirement's `sync -f` in one shell that ends with the server, which exits once idle", async () => {
    const dir = freshRoot();
    const script = [
      `const { readFileSync } = await import("node:fs");`,
      `const { createFsStore } = await import(${JSON.stringify(entry)});`,
      `const store = await createFsStore({ root: ${JSON.stringify(dir)}, deliveryLogMs: 20 });`,
      `const message = async function* () { yield new TextEncoder().encode("Subject: x\\r\\n\\r\\nhi\\r\\n"); };`,
      // Three logs, each retired (and its files synced in bulk) before the next delivery.
      `for (let i = 0; i < 3; i++) { await store.deliver(["alice@example.test"], message()); await new Promise((r) => setTimeout(r, 300)); }`,
      `const children = readFileSync("/proc/self/task/" + process.pid + "/children", "utf8").trim().split(/\\s+/).filter(Boolean);`,
      `process.stdout.write(JSON.stringify(children.map((pid) => [pid, readFileSync("/proc/" + pid + "/cmdline", "utf8").split("\\0")[0]])) + "\\n");`,
      // No close: an idle helper must not keep the process alive.
    ].join("\n");
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let errors = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (errors += chunk.toString()));
    const exited = await Promise.race([
      new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code))),
      new Promise<"hung">((resolve) => setTimeout(() => resolve("hung"), 15_000)),
    ]);
    if (exited === "hung") child.kill("SIGKILL");
    expect({ exited, errors }).toEqual({ exited: 0, errors: "" });
    const children = JSON.parse(out) as Array<[string, string]>;
    expect(children).toHaveLength(1);
    expect(children[0]![1]).toBe("sh");
    // Its input closed with the server: it is gone too.
    const helper = `/proc/${children[0]![0]}`;
    for (let i = 0; i < 50 && existsSync(helper); i++) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(helper)).toBe(false);
    // And the messages are there.
    expect(pendingIn(dir)).toBe(0);
  });

  it("answers syncs in order, and after its shell was killed starts another", async () => {
    const { dir, files } = await oneMessageClosed();
    const warn = vi.fn();
    const bulk = new BulkSync(warn);
    const newDir = join(dir, "example.test", "alice", "new");
    try {
      await Promise.all([bulk.sync(files, [newDir]), bulk.sync(files, [newDir]), bulk.sync(files, [newDir])]);
      if (process.platform === "linux") {
        const children = readFileSync(`/proc/self/task/${process.pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean);
        const shells = children.filter((pid) => readFileSync(`/proc/${pid}/cmdline`, "utf8").startsWith("sh\0"));
        expect(shells.length).toBeGreaterThan(0);
        for (const pid of shells) process.kill(Number(pid), "SIGKILL");
        await new Promise((r) => setTimeout(r, 200));
      }
      await bulk.sync(files, [newDir]);
      expect(warn).not.toHaveBeenCalled();
    } finally {
      bulk.close();
    }
  });
});
