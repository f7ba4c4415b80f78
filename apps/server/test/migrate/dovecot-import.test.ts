import { mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { fromBytes, readAll, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { formatDovecotUidl, importDovecotMaildir, lfToCrlf, parseDovecotUidlist, summarizeImport } from "../../src/migrate/index.js";

const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
const crlf = (s: string): string => s.replace(/\r?\n/g, "\r\n");

describe("formatDovecotUidl", () => {
  const vars = { uid: 1, uidValidity: 1_700_000_000, filename: "1700000000.M1P2.host,S=10,W=12", guid: "abc" };

  it.each([
    ["%08Xu%08Xv", "000000016553f100"],
    ["%u", "1"],
    ["%v.%u", "1700000000.1"],
    ["%Xv-%Xu", "6553f100-1"],
    ["%08XUu%08XUv", "000000016553F100"],
    ["%{uidvalidity}.%{uid}", "1700000000.1"],
    ["%f", "1700000000.M1P2.host,S=10,W=12"],
    ["%g", "abc"],
    ["%0.10f", "1700000000"],
    ["x%%%u", "x%1"],
  ])("%s → %s", (format, expected) => {
    expect(formatDovecotUidl(format, vars)).toBe(expected);
  });

  it("pads UIDs beyond 8 hex digits by widening, like printf", () => {
    expect(formatDovecotUidl("%08Xu", { ...vars, uid: 0x1_0000_0000 })).toBe("100000000");
  });

  it("refuses %m (header MD5), which an import cannot reproduce", () => {
    expect(() => formatDovecotUidl("%m", vars)).toThrow(/%m is not supported/);
  });
});

describe("parseDovecotUidlist", () => {
  it("reads version 3 with extension fields", () => {
    const list = parseDovecotUidlist(
      "3 V1700000000 N6 G0123456789abcdef\n" +
        "1 :a,S=5\n" +
        "2 W1394 G9f8e :b,S=9,W=10\n" +
        "5 O0000beefcafe W20 :c\n",
    );
    expect(list).toMatchObject({ version: 3, uidValidity: 1_700_000_000, nextUid: 6, guid: "0123456789abcdef" });
    expect(list.records.map((r) => [r.uid, r.filename, Object.fromEntries(r.extensions)])).toEqual([
      [1, "a,S=5", {}],
      [2, "b,S=9,W=10", { W: "1394", G: "9f8e" }],
      [5, "c", { O: "0000beefcafe", W: "20" }],
    ]);
  });

  it("reads version 1", () => {
    const list = parseDovecotUidlist("1 1100000000 3\n1 x.host\n2 y.host\n");
    expect(list).toMatchObject({ version: 1, uidValidity: 1_100_000_000, nextUid: 3 });
    expect(list.records.map((r) => r.filename)).toEqual(["x.host", "y.host"]);
  });

  it("rejects an unknown version", () => {
    expect(() => parseDovecotUidlist("7 V1 N1\n")).toThrow(/unsupported version 7/);
  });
});

describe("lfToCrlf", () => {
  it("converts bare LF, keeps CRLF, and handles a CR at the end of a chunk", async () => {
    const chunks = ["a\nb\r", "\nc\n", "\r\n", "\n", "d"].map((s) => new TextEncoder().encode(s));
    async function* source() {
      yield* chunks;
    }
    expect(text(await readAll(lfToCrlf(source())))).toBe("a\r\nb\r\nc\r\n\r\n\r\nd");
  });
});

// A Maildir as Dovecot leaves it: LF line ends, `,S=`/`,W=` in the names, flags after `:2,`.
const MESSAGES = {
  one: "From: a@remote.test\nSubject: one\n\nfirst\n",
  two: "From: b@remote.test\nSubject: two\n\nsecond\nwith two lines\n",
  migrated: "From: c@remote.test\nSubject: three, came from an older server\n\nthird\n",
  fresh: "From: d@remote.test\nSubject: four, never seen by dovecot\n\nfourth\n",
  crlfAlready: "From: e@remote.test\r\nSubject: five\r\n\r\nalready CRLF\r\n",
};

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

function named(base: string, body: string): string {
  return `${base},S=${Buffer.byteLength(body)},W=${Buffer.byteLength(crlf(body))}`;
}

async function buildMaildir(): Promise<{ dir: string; times: Record<string, number> }> {
  const dir = await mkdtemp(join(tmpdir(), "mr-dovecot-hand-"));
  dirs.push(dir);
  for (const sub of ["cur", "new", "tmp"]) await mkdir(join(dir, sub));
  const one = named("1700000001.M1P100.old", MESSAGES.one);
  const two = named("1700000002.M2P100.old", MESSAGES.two);
  const migrated = named("1700000003.M3P100.old", MESSAGES.migrated);
  const fresh = named("1700000009.M9P100.old", MESSAGES.fresh);
  const five = named("1700000005.M5P100.old", MESSAGES.crlfAlready);
  const files: [string, string, number][] = [
    [`cur/${one}:2,S`, MESSAGES.one, 1_700_000_001],
    [`cur/${two}:2,`, MESSAGES.two, 1_700_000_002],
    [`cur/${migrated}:2,RS`, MESSAGES.migrated, 1_700_000_003],
    [`new/${fresh}`, MESSAGES.fresh, 1_700_000_009],
    [`cur/${five}:2,`, MESSAGES.crlfAlready, 1_700_000_005],
  ];
  const times: Record<string, number> = {};
  for (const [path, body, seconds] of files) {
    await writeFile(join(dir, path), body);
    await utimes(join(dir, path), seconds, seconds);
    times[path] = seconds * 1000;
  }
  await writeFile(
    join(dir, "dovecot-uidlist"),
    "3 V1700000000 N8 G0123456789abcdef0123456789abcdef\n" +
      `1 :${one}\n` +
      `2 W${Buffer.byteLength(crlf(MESSAGES.two))} :${two}\n` +
      // uid 3 was expunged, its file is gone but the line is still there
      "3 :1700000000.M0P1.old,S=1,W=1\n" +
      `5 O0000beefcafe :${migrated}\n` +
      `7 :${five}\n`,
  );
  return { dir, times };
}

async function contents(store: Store, mailbox: string): Promise<Map<string, { size: number; text: string; retrieved: boolean; receivedAt: number }>> {
  const box = store.mailbox(mailbox);
  const out = new Map<string, { size: number; text: string; retrieved: boolean; receivedAt: number }>();
  for (const m of await box.list()) {
    out.set(m.uid, { size: m.size, text: text(await readAll(await box.read(m.uid))), retrieved: m.retrievedAt !== null, receivedAt: m.receivedAt });
  }
  return out;
}

describe("importDovecotMaildir (hand-built Maildir)", () => {
  it("keeps Dovecot's UIDLs, stores CRLF, marks seen mail retrieved, and numbers unlisted files next", async () => {
    const { dir } = await buildMaildir();
    const store = createMemoryStore();
    const report = await importDovecotMaildir(store, { maildir: dir, mailbox: "alice@example.test" });

    expect(report).toMatchObject({
      uidValidity: 1_700_000_000,
      messages: 5,
      imported: 5,
      skipped: 0,
      unlisted: 1,
      missingFiles: 1,
      storedUidls: 1,
      sizeMismatches: [],
      failures: [],
    });
    const got = await contents(store, "alice@example.test");
    // uid 1, 2 from the format; uid 5 keeps the stored O UIDL; 7 listed; the new/ file gets N=8.
    expect([...got.keys()]).toEqual(["000000016553f100", "000000026553f100", "0000beefcafe", "000000076553f100", "000000086553f100"]);
    expect(got.get("000000016553f100")).toMatchObject({ text: crlf(MESSAGES.one), size: Buffer.byteLength(crlf(MESSAGES.one)), retrieved: true, receivedAt: 1_700_000_001_000 });
    expect(got.get("000000026553f100")).toMatchObject({ text: crlf(MESSAGES.two), retrieved: false });
    expect(got.get("0000beefcafe")).toMatchObject({ text: crlf(MESSAGES.migrated), retrieved: true });
    expect(got.get("000000076553f100")).toMatchObject({ text: MESSAGES.crlfAlready, size: Buffer.byteLength(MESSAGES.crlfAlready) });
    expect(got.get("000000086553f100")).toMatchObject({ text: crlf(MESSAGES.fresh), retrieved: false, receivedAt: 1_700_000_009_000 });
    expect(report.bytes).toBe([...got.values()].reduce((n, m) => n + m.size, 0));
  });

  it("a second run imports nothing; an interrupted one finishes on re-run", async () => {
    const { dir } = await buildMaildir();
    const store = createMemoryStore();
    const controller = new AbortController();
    let n = 0;
    await expect(
      importDovecotMaildir(store, {
        maildir: dir,
        mailbox: "alice@example.test",
        signal: controller.signal,
        onProgress: (e) => {
          if (e.action === "imported" && ++n === 2) controller.abort(new Error("cut"));
        },
      }),
    ).rejects.toThrow("cut");
    expect(await store.mailbox("alice@example.test").list()).toHaveLength(2);

    const second = await importDovecotMaildir(store, { maildir: dir, mailbox: "alice@example.test" });
    expect(second).toMatchObject({ imported: 3, skipped: 2 });
    const third = await importDovecotMaildir(store, { maildir: dir, mailbox: "alice@example.test" });
    expect(third).toMatchObject({ imported: 0, skipped: 5, bytes: 0 });
  });

  it.each([
    ["%u", ["1", "2", "0000beefcafe", "7", "8"]],
    ["%v.%u", ["1700000000.1", "1700000000.2", "0000beefcafe", "1700000000.7", "1700000000.8"]],
  ])("uidlFormat %s", async (uidlFormat, expected) => {
    const { dir } = await buildMaildir();
    const store = createMemoryStore();
    await importDovecotMaildir(store, { maildir: dir, mailbox: "m", uidlFormat });
    expect((await store.mailbox("m").list()).map((m) => m.uid)).toEqual(expected);
  });

  it("refuses a format that gives two messages one UIDL, before writing anything", async () => {
    const { dir } = await buildMaildir();
    const store = createMemoryStore();
    await expect(importDovecotMaildir(store, { maildir: dir, mailbox: "m", uidlFormat: "%v" })).rejects.toThrow(/gives 1700000000 to two messages/);
    expect(await store.mailbox("m").list()).toEqual([]);
  });

  it("a Maildir Dovecot never opened (no uidlist) still imports, numbered from 1", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mr-dovecot-bare-"));
    dirs.push(dir);
    await mkdir(join(dir, "new"), { recursive: true });
    await writeFile(join(dir, "new", "2.host"), "Subject: b\n\nb\n");
    await writeFile(join(dir, "new", "1.host"), "Subject: a\n\na\n");
    const store = createMemoryStore();
    const report = await importDovecotMaildir(store, { maildir: dir, mailbox: "m", uidlFormat: "%u" });
    expect(report).toMatchObject({ imported: 2, unlisted: 2 });
    const box = store.mailbox("m");
    expect((await box.list()).map((m) => m.uid)).toEqual(["1", "2"]);
    expect(text(await readAll(await box.read("1")))).toBe("Subject: a\r\n\r\na\r\n");
  });

  it("does not disturb mail already in the mailbox", async () => {
    const { dir } = await buildMaildir();
    const store = createMemoryStore();
    const existing = await store.mailbox("m").append(fromBytes("Subject: already here\r\n\r\nx\r\n"));
    await importDovecotMaildir(store, { maildir: dir, mailbox: "m" });
    const uids = (await store.mailbox("m").list()).map((m) => m.uid);
    expect(uids[0]).toBe(existing.uid);
    expect(uids).toHaveLength(6);
  });

  it("fails clearly for a directory that does not exist", async () => {
    await expect(importDovecotMaildir(createMemoryStore(), { maildir: "/nonexistent/mr-test", mailbox: "m" })).rejects.toThrow(/is not a directory/);
  });
});

describe("summaries for the CLI", () => {
  it("summarizeImport names what happened", async () => {
    const { dir } = await buildMaildir();
    const report = await importDovecotMaildir(createMemoryStore(), { maildir: dir, mailbox: "m" });
    expect(summarizeImport(report)).toEqual([
      "uidvalidity: 1700000000",
      `messages:    5 found, 5 imported (${report.bytes} B), 0 already there`,
      "kept 1 UIDLs stored in dovecot-uidlist (O field)",
      "1 files were not in dovecot-uidlist yet; numbered as Dovecot would",
      "1 dovecot-uidlist entries had no file (already expunged)",
    ]);
  });
});
