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
        "5 O1 P0000beefcafe W20 :c\n",
    );
    expect(list).toMatchObject({ version: 3, uidValidity: 1_700_000_000, nextUid: 6, guid: "0123456789abcdef" });
    expect(list.records.map((r) => [r.uid, r.filename, Object.fromEntries(r.extensions)])).toEqual([
      [1, "a,S=5", {}],
      [2, "b,S=9,W=10", { W: "1394", G: "9f8e" }],
      [5, "c", { O: "1", P: "0000beefcafe", W: "20" }],
    ]);
  });

  it("reads version 1", () => {
    const list = parseDovecotUidlist("1 1100000000 3\n1 x.host\n2 y.host\n");
    expect(list).toMatchObject({ version: 1, uidValidity: 1_100_000_000, nextUid: 3 });
    expect(list.records.map((r) => r.filename)).toEqual(["x.host", "y.host"]);
  });

  it("keeps a file name only up to its first colon, in every version (Dovecot matches records by base name)", () => {
    // The lines from Dovecot's Maildir documentation: the name Dovecot last saw, flags included.
    const v3 = parseDovecotUidlist(
      "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n" +
        "25006 :1276528487.M364837P9451.kurkku,S=1355,W=1394:2,\n" +
        "25017 W2481 :1276533073.M242911P3632.kurkku:2,F\n",
    );
    expect(v3.records.map((r) => [r.uid, r.filename, Object.fromEntries(r.extensions)])).toEqual([
      [25006, "1276528487.M364837P9451.kurkku,S=1355,W=1394", {}],
      [25017, "1276533073.M242911P3632.kurkku", { W: "2481" }],
    ]);
    // courierimapuiddb (version 1) and courier-dovecot-migrate.pl write whole names too.
    const v1 = parseDovecotUidlist("1 1100000000 3\n1 x.host:2,S\n2 y.host\n");
    expect(v1.records.map((r) => r.filename)).toEqual(["x.host", "y.host"]);
    const v2 = parseDovecotUidlist("2 1100000000 2\n1 0 x.host:2,RS\n");
    expect(v2.records.map((r) => r.filename)).toEqual(["x.host"]);
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
      // Left by a migration into Dovecot: P is the POP3 UIDL, O only the POP3 message order.
      `5 O1 P0000beefcafe :${migrated}\n` +
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
    // uid 1, 2 from the format; uid 5 keeps the stored P UIDL; 7 listed; the new/ file gets N=8.
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

  it("takes a stored UIDL from P (empty: the base file name), never from O", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mr-dovecot-pop3uidl-"));
    dirs.push(dir);
    await mkdir(join(dir, "cur"), { recursive: true });
    const names = ["1600000001.M1P1.host", "1600000002.M2P1.host", "1600000003.M3P1.host", "1600000004.M4P1.host"];
    for (const [i, name] of names.entries()) await writeFile(join(dir, "cur", `${name}:2,S`), `Subject: m${i}\n\nbody\n`);
    // As courier-dovecot-migrate.pl writes them: `<uid> O<order> P<uidl> W<vsize> :<file>`.
    await writeFile(
      join(dir, "dovecot-uidlist"),
      "3 V1600000000 N5\n" +
        `1 O1 PUID-from-courier-1 W123 :${names[0]}\n` +
        `2 O2 PUID-from-courier-2 :${names[1]}:2,S\n` +
        `3 O3 P :${names[2]}\n` +
        `4 O4 :${names[3]}\n`,
    );
    const store = createMemoryStore();
    const report = await importDovecotMaildir(store, { maildir: dir, mailbox: "m" });
    expect(report).toMatchObject({ imported: 4, storedUidls: 3, missingFiles: 0, unlisted: 0, failures: [] });
    // Without P Dovecot falls back to pop3_uidl_format (uid 4, uidvalidity 1600000000 = 0x5f5e1000).
    expect((await store.mailbox("m").list()).map((m) => m.uid)).toEqual([
      "UID-from-courier-1",
      "UID-from-courier-2",
      names[2],
      "000000045f5e1000",
    ]);
  });

  it("matches uidlist names that carry :2,<flags> to their files, keeping Dovecot's UIDs", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mr-dovecot-flagged-"));
    dirs.push(dir);
    await mkdir(join(dir, "cur"), { recursive: true });
    // Dovecot's documented example; the files' flags have changed since the uidlist was written.
    const first = "1276528487.M364837P9451.kurkku,S=1355,W=1394";
    const second = "1276533073.M242911P3632.kurkku";
    // 1355 octets with 39 LF line ends: 1394 once they are CRLF, as the name says.
    const head = ["Subject: documented", ...Array<string>(37).fill("x".repeat(33))].join("\n") + "\n";
    const body = head + "y".repeat(1355 - head.length - 1) + "\n";
    expect([Buffer.byteLength(body), Buffer.byteLength(crlf(body))]).toEqual([1355, 1394]);
    await writeFile(join(dir, "cur", `${first}:2,S`), body);
    await writeFile(join(dir, "cur", `${second}:2,F`), "Subject: flagged\n\nf\n");
    await writeFile(
      join(dir, "dovecot-uidlist"),
      "3 V1275660208 N25022 G3085f01b7f11094c501100008c4a11c1\n" +
        `25006 :${first}:2,\n` +
        `25017 W2481 :${second}:2,F\n`,
    );
    const store = createMemoryStore();
    const report = await importDovecotMaildir(store, { maildir: dir, mailbox: "m" });
    expect(report).toMatchObject({ imported: 2, missingFiles: 0, unlisted: 0, sizeMismatches: [], failures: [] });
    // 25006 = 0x61ae, 25017 = 0x61b9, 1275660208 = 0x4c0907b0: what Dovecot's POP3 server listed.
    expect((await store.mailbox("m").list()).map((m) => m.uid)).toEqual(["000061ae4c0907b0", "000061b94c0907b0"]);
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
      "kept 1 UIDLs stored in dovecot-uidlist (P field)",
      "1 files were not in dovecot-uidlist yet; numbered as Dovecot would",
      "1 dovecot-uidlist entries had no file (already expunged)",
    ]);
  });
});
