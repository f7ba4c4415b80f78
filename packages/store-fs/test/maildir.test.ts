import { describe, expect, it, vi } from "vitest";
import { promises as fsPromises } from "node:fs";
import { execFileSync } from "node:child_process";
import { mkdir, readdir, readFile, rename, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { hasStoreErrorCode } from "@mailroom/store";
import { DIRECTORY_FILE, JOURNAL_FILE, createFsStore, locateMailbox } from "../src/index.js";
import { openStore, readText, tempRoot, text } from "./helpers.js";

const root = await tempRoot("maildir");
const unlinkReal = fsPromises.unlink.bind(fsPromises);
let n = 0;
const fresh = () => join(root, `ns${++n}`);

const LF_MSG = "Return-Path: <x@y.test>\nSubject: from postfix\n\nbody 1\nbody 2\r\nbody 3\n";
const CRLF_OF_LF_MSG = LF_MSG.replace(/\r?\n/g, "\r\n");

async function maildir(ns: string, id: string): Promise<string> {
  const dir = locateMailbox(ns, id).dir;
  for (const sub of ["cur", "new", "tmp"]) await mkdir(join(dir, sub), { recursive: true });
  return dir;
}

describe("maildir specifics", () => {
  it("uses the Postfix/Dovecot layout <root>/<domain>/<local>/{cur,new,tmp} and names with S= and W=", async () => {
    const ns = fresh();
    const store = await openStore(ns);
    const info = await store.mailbox("alice@example.test").append(text("Subject: x\r\n\r\nhi\r\n"));
    const files = await readdir(join(ns, "example.test", "alice", "new"));
    expect(files).toHaveLength(1);
    expect(files[0]).toBe(`${info.uid},S=${info.size},W=${info.size}`);
    expect(info.uid).toMatch(/^\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.test\.host$/);
  });

  it("serves foreign LF mail (Postfix name without S=) as CRLF with the CRLF size", async () => {
    const ns = fresh();
    const dir = await maildir(ns, "bob@example.test");
    await writeFile(join(dir, "new", "1764200000.V801I1a2bM123456.mx.example.test"), LF_MSG);
    await writeFile(join(dir, "cur", "1764200001.M5P6.mx,S=10,W=12:2,S"), "a\nb\nc\r\n\n");
    const box = (await openStore(ns)).mailbox("bob@example.test");
    const list = await box.list();
    expect(list.map((m) => m.uid)).toEqual(["1764200000.V801I1a2bM123456.mx.example.test", "1764200001.M5P6.mx"]);
    expect(list[0]!.size).toBe(Buffer.byteLength(CRLF_OF_LF_MSG));
    expect(await readText(box.read(list[0]!.uid))).toBe(CRLF_OF_LF_MSG);
    expect(list[1]!.size).toBe(12);
    expect(await readText(box.read(list[1]!.uid))).toBe("a\r\nb\r\nc\r\n\r\n");
    expect(await readText(box.read(list[0]!.uid, { bodyLines: 1 }))).toBe(
      "Return-Path: <x@y.test>\r\nSubject: from postfix\r\n\r\nbody 1\r\n",
    );
    // a second listing uses the cached size, and a fresh instance finds it in the size cache file
    expect(await box.list()).toEqual(list);
    expect(JSON.parse(await readFile(join(dir, "mailroom-sizes.json"), "utf8"))).toEqual({
      [list[0]!.uid]: Buffer.byteLength(CRLF_OF_LF_MSG),
    });
    expect(await (await openStore(ns)).mailbox("bob@example.test").list()).toEqual(list);
  });

  it("gives long or odd foreign base names a stable short uid", async () => {
    const ns = fresh();
    const dir = await maildir(ns, "c@example.test");
    const long = `1764200000.${"x".repeat(90)}.host`;
    await writeFile(join(dir, "new", long), "Subject: a\r\n\r\n");
    const [first] = await (await openStore(ns)).mailbox("c@example.test").list();
    expect(first!.uid).toMatch(/^H[0-9a-f]{40}$/);
    const [again] = await (await openStore(ns)).mailbox("c@example.test").list();
    expect(again!.uid).toBe(first!.uid);
  });

  it("keeps the uid when another client moves the file to cur/ and sets flags", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("d@example.test");
    const info = await box.append(text("Subject: a\r\n\r\nbody\r\n"));
    const dir = locateMailbox(ns, "d@example.test").dir;
    const [name] = await readdir(join(dir, "new"));
    await rename(join(dir, "new", name!), join(dir, "cur", `${name}:2,RS`));
    expect(await box.list()).toEqual([info]);
    expect(await readText(box.read(info.uid))).toBe("Subject: a\r\n\r\nbody\r\n");
    const lease = await box.acquireLease({ holder: "t", ttlMs: 5000 });
    await box.markRetrieved([info.uid], lease);
    expect(await readdir(join(dir, "cur"))).toEqual([`${name}:2,RS`]);
    expect(await box.expunge([info.uid], lease)).toBe(1);
    expect(await readdir(join(dir, "cur"))).toEqual([]);
  });

  it("expunges a message another client renames (a flag change) between the listing and the unlink", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("r@example.test");
    const info = await box.append(text("Subject: renamed under us\r\n\r\nbody\r\n"));
    const dir = locateMailbox(ns, "r@example.test").dir;
    const [name] = await readdir(join(dir, "new"));
    await rename(join(dir, "new", name!), join(dir, "cur", `${name}:2,`));
    // Dovecot sets \Seen just as our unlink of the listed name is about to run.
    const lease = await box.acquireLease({ holder: "t", ttlMs: 5000 });
    let raced = false;
    const spy = vi.spyOn(fsPromises, "unlink").mockImplementation(async (path) => {
      if (!raced && String(path).endsWith(`${name}:2,`)) {
        raced = true;
        await rename(join(dir, "cur", `${name}:2,`), join(dir, "cur", `${name}:2,S`));
      }
      return unlinkReal(path);
    });
    try {
      expect(await box.expunge([info.uid], lease)).toBe(1);
    } finally {
      spy.mockRestore();
    }
    await lease.release();
    expect(raced).toBe(true);
    expect(await readdir(join(dir, "cur"))).toEqual([]);
    expect(await box.list()).toEqual([]);
  });

  it("markRetrieved moves new/ files to cur/ with :2,S", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("e@example.test");
    const info = await box.append(text("Subject: a\r\n\r\n"));
    const lease = await box.acquireLease({ holder: "t", ttlMs: 5000 });
    await box.markRetrieved([info.uid], lease);
    const dir = locateMailbox(ns, "e@example.test").dir;
    expect(await readdir(join(dir, "new"))).toEqual([]);
    expect(await readdir(join(dir, "cur"))).toEqual([`${info.uid},S=${info.size},W=${info.size}:2,S`]);
  });

  it("never shows tmp/ files and removes ones older than 36 hours on open", async () => {
    const ns = fresh();
    const dir = await maildir(ns, "f@example.test");
    await writeFile(join(dir, "tmp", "1.M1P1.crashed"), "Subject: half");
    await writeFile(join(dir, "tmp", "2.M2P2.fresh"), "Subject: in progress");
    const old = new Date(Date.now() - 37 * 3600 * 1000);
    await utimes(join(dir, "tmp", "1.M1P1.crashed"), old, old);
    await writeFile(join(dir, "mailroom-state.json.tmp-99.abc123"), "{");
    await utimes(join(dir, "mailroom-state.json.tmp-99.abc123"), old, old);
    const box = (await openStore(ns)).mailbox("f@example.test");
    expect(await box.list()).toEqual([]);
    await box.append(text("Subject: real\r\n\r\n"));
    expect((await box.list()).length).toBe(1);
    expect(await readdir(join(dir, "tmp"))).toEqual(["2.M2P2.fresh"]);
    expect(await readdir(dir)).not.toContain("mailroom-state.json.tmp-99.abc123");
  });

  it("removes the tmp/ file of a failed, aborted or too-big append", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("t@example.test");
    await expect(box.append(text("x".repeat(1000)), { maxBytes: 10 })).rejects.toSatisfy((e) => hasStoreErrorCode(e, "too-big"));
    async function* broken() {
      yield new TextEncoder().encode("Subject: a\r\n");
      throw new Error("socket reset");
    }
    await expect(box.append(broken())).rejects.toThrow("socket reset");
    await expect(box.append(text("Subject: a\r\n\r\n"), { signal: AbortSignal.abort() })).rejects.toThrow();
    const dir = locateMailbox(ns, "t@example.test").dir;
    for (const sub of ["tmp", "new", "cur"]) expect(await readdir(join(dir, sub))).toEqual([]);
  });

  it("rolls an interrupted expunge forward: all listed files go, and nothing shows half-deleted", async () => {
    const ns = fresh();
    const store = await openStore(ns);
    const box = store.mailbox("g@example.test");
    const a = await box.append(text("Subject: a\r\n\r\n"));
    const b = await box.append(text("Subject: b\r\n\r\n"));
    const c = await box.append(text("Subject: c\r\n\r\n"));
    const dir = locateMailbox(ns, "g@example.test").dir;
    // The crash happened after the journal was written and one of two files was unlinked.
    await writeFile(join(dir, JOURNAL_FILE), JSON.stringify({ bases: [a.uid, c.uid] }));
    const [cFile] = (await readdir(join(dir, "new"))).filter((f) => f.startsWith(c.uid));
    await (await import("node:fs/promises")).unlink(join(dir, "new", cFile!));

    // While someone holds a live lease the journal's messages are hidden, not half-visible.
    const other = (await openStore(ns)).mailbox("g@example.test");
    const lease = await other.acquireLease({ holder: "restarted server", ttlMs: 5000 });
    // acquiring the lease already rolled the journal forward
    expect(JSON.parse(await readFile(join(dir, JOURNAL_FILE), "utf8")).bases).toEqual([]);
    expect((await box.list()).map((m) => m.uid)).toEqual([b.uid]);
    expect((await readdir(join(dir, "new"))).length).toBe(1);
    await lease.release();

    // Without anyone holding the lease, list() itself finishes the job.
    const d = await box.append(text("Subject: d\r\n\r\n"));
    await writeFile(join(dir, JOURNAL_FILE), JSON.stringify({ gen: 7, bases: [b.uid] }));
    expect((await (await openStore(ns)).mailbox("g@example.test").list()).map((m) => m.uid)).toEqual([d.uid]);
    expect(JSON.parse(await readFile(join(dir, JOURNAL_FILE), "utf8"))).toEqual({ gen: 7, bases: [] });
    expect((await readdir(join(dir, "new"))).length).toBe(1);
  });

  it("never lists an expunge half-done, even while it runs", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("v@example.test");
    const uids: string[] = [];
    for (let i = 0; i < 300; i++) uids.push((await box.append(text(`Subject: ${i}\r\n\r\n`))).uid);
    const watcher = (await openStore(ns)).mailbox("v@example.test");
    const lease = await box.acquireLease({ holder: "t", ttlMs: 10_000 });
    let done = false;
    const expunging = box.expunge(uids.filter((_, i) => i % 2 === 0), lease).finally(() => {
      done = true;
    });
    const seen = new Set<number>();
    while (!done) seen.add((await watcher.list()).length);
    expect(await expunging).toBe(150);
    seen.add((await watcher.list()).length);
    expect([...seen].every((count) => count === 300 || count === 150)).toBe(true);
    expect(seen.has(150)).toBe(true);
  });

  it("lets only one of several racing imports of one explicit UID win", async () => {
    const ns = fresh();
    const boxes = await Promise.all([openStore(ns), openStore(ns)]);
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => boxes[i % 2]!.mailbox("w@example.test").append(text(`Subject: ${i}\r\n\r\n`), { uid: "imported-1" })),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of results) if (r.status === "rejected") expect(hasStoreErrorCode(r.reason, "exists")).toBe(true);
    const dir = locateMailbox(ns, "w@example.test").dir;
    expect((await readdir(join(dir, "new"))).length).toBe(1);
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
  });

  it("picks up directory changes made by another process", async () => {
    const ns = fresh();
    const server = await openStore(ns);
    const cli = await openStore(ns);
    await server.directory.addDomain("example.test");
    expect(await server.directory.getAccount("zed@example.test")).toBeNull();
    await cli.directory.addAccount({ address: "zed@example.test", passwordHash: "h1" });
    expect((await server.directory.getAccount("zed@example.test"))?.passwordHash).toBe("h1");

    // A real second process rewrites the file (as an operator's script or `mailroom user passwd` would).
    const file = join(ns, DIRECTORY_FILE);
    const script = `
      const fs = require("node:fs");
      const data = JSON.parse(fs.readFileSync(${JSON.stringify(file)}, "utf8"));
      data.accounts[0].passwordHash = "h2";
      data.domains.push("other.test");
      fs.writeFileSync(${JSON.stringify(file)} + ".new", JSON.stringify(data));
      fs.renameSync(${JSON.stringify(file)} + ".new", ${JSON.stringify(file)});`;
    execFileSync(process.execPath, ["-e", script], { timeout: 10_000 });
    expect((await server.directory.getAccount("zed@example.test"))?.passwordHash).toBe("h2");
    expect(await server.directory.listDomains()).toEqual(["example.test", "other.test"]);
    expect(JSON.parse(await readFile(file, "utf8")).accounts).toHaveLength(1);
  });

  it("serialises directory writers across instances", async () => {
    const ns = fresh();
    const stores = await Promise.all([openStore(ns), openStore(ns), openStore(ns)]);
    await stores[0]!.directory.addDomain("example.test");
    await Promise.all(
      Array.from({ length: 15 }, (_, i) => stores[i % 3]!.directory.addAccount({ address: `u${i}@example.test`, passwordHash: "h" })),
    );
    expect(await stores[1]!.directory.listAccounts()).toHaveLength(15);
  });

  it("lease file is JSON with token, holder, expiresAt and (on Linux) the owning process", async () => {
    const ns = fresh();
    const box = (await openStore(ns)).mailbox("h@example.test");
    const lease = await box.acquireLease({ holder: "pop3 127.0.0.1:1234", ttlMs: 5000 });
    const dir = locateMailbox(ns, "h@example.test").dir;
    expect(JSON.parse(await readFile(join(dir, "mailroom-lease"), "utf8"))).toEqual({
      token: lease.token,
      holder: "pop3 127.0.0.1:1234",
      expiresAt: lease.expiresAt,
      ...(process.platform === "linux"
        ? {
            owner: {
              boot: expect.any(String),
              pidns: expect.stringMatching(/^pid:\[\d+\]$/),
              pid: process.pid,
              start: expect.stringMatching(/^\d+$/),
            },
          }
        : {}),
    });
    await lease.release();
    await expect(stat(join(dir, "mailroom-lease"))).rejects.toThrow();
  });

  it("creates every file owner-only and every directory owner-only: mail, password hashes, queue", async () => {
    const ns = join(fresh(), "made-by-the-store");
    // The durable store, so that the delivery log and its file thread write files too.
    const store = await createFsStore({ root: ns, hostname: "test.host" });
    try {
      await store.directory.addDomain("example.test");
      await store.directory.addAccount({ address: "alice@example.test", passwordHash: "$scrypt$not-a-real-hash" });
      await store.deliver(["alice@example.test", "bob@example.test"], text("Subject: small\r\n\r\nhi\r\n"));
      await store.deliver(["alice@example.test"], text(`Subject: big\r\n\r\n${"x".repeat(100_000)}\r\n`));
      await store.queue.enqueue({ sender: "alice@example.test", recipients: ["x@remote.test"] }, text("Subject: out\r\n\r\nhi\r\n"));
      const box = store.mailbox("alice@example.test");
      const lease = await box.acquireLease({ holder: "test", ttlMs: 60_000 });
      await box.markRetrieved([(await box.list())[0]!.uid], lease);
      await lease.release();
    } finally {
      await store.close();
    }
    const open: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await readdir(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (((await stat(path)).mode & 0o077) !== 0) open.push(path);
        if (entry.isDirectory()) await walk(path);
      }
    };
    if (((await stat(ns)).mode & 0o077) !== 0) open.push(ns);
    await walk(ns);
    expect(open).toEqual([]);
    expect((await readdir(join(ns, "example.test", "alice", "cur"))).length).toBe(1);
  });

  it("gives maildirs and messages the group bits of a shared root, and keeps its own files owner-only", async () => {
    const ns = join(fresh(), "shared");
    await mkdir(ns, { recursive: true });
    // What an operator does to share the mail with Dovecot running as another user of the group.
    await fsPromises.chmod(ns, 0o3770);
    const umask = Number.parseInt(/^Umask:\s*([0-7]+)/m.exec(await readFile("/proc/self/status", "utf8"))?.[1] ?? "22", 8);
    const store = await createFsStore({ root: ns, hostname: "test.host" });
    try {
      await store.directory.addDomain("example.test");
      await store.directory.addAccount({ address: "alice@example.test", passwordHash: "$scrypt$not-a-real-hash" });
      await store.deliver(["alice@example.test"], text("Subject: small\r\n\r\nhi\r\n"));
      await store.deliver(["alice@example.test"], text(`Subject: big\r\n\r\n${"x".repeat(100_000)}\r\n`));
      await store.mailbox("alice@example.test").append(text("Subject: appended\r\n\r\nhi\r\n"));
    } finally {
      await store.close();
    }
    const mode = async (path: string) => (await stat(path)).mode & 0o777;
    const box = join(ns, "example.test", "alice");
    for (const dir of [join(ns, "example.test"), box, join(box, "new"), join(box, "cur"), join(box, "tmp")]) expect(await mode(dir)).toBe(0o770 & ~umask);
    const messages = await readdir(join(box, "new"));
    expect(messages).toHaveLength(3);
    for (const name of messages) expect(await mode(join(box, "new", name))).toBe(0o660 & ~umask);
    // The password hashes are nobody else's business, shared root or not.
    expect(await mode(join(ns, DIRECTORY_FILE))).toBe(0o600);
  });

  it("shares nothing through a root without the setgid bit, and warns of a root its group could write in", async () => {
    const { mailModesOf, groupMayReplaceOwnFiles } = await import("../src/fsutil.js");
    // A plain `mkdir` (0755) or 0775: no group was chosen on purpose, so mail stays owner-only.
    expect(mailModesOf(0o40755)).toEqual({ dir: 0o700, file: 0o600 });
    expect(mailModesOf(0o40775)).toEqual({ dir: 0o700, file: 0o600 });
    expect(mailModesOf(0o42750)).toEqual({ dir: 0o750, file: 0o640 });
    expect(groupMayReplaceOwnFiles(0o42770)).toBe(true);
    expect(groupMayReplaceOwnFiles(0o43770)).toBe(false);
    expect(groupMayReplaceOwnFiles(0o42750)).toBe(false);
  });

  it("lists past directories and FIFOs in new/ and cur/ instead of failing or hanging", async () => {
    const ns = fresh();
    const dir = await maildir(ns, "odd@example.test");
    await mkdir(join(dir, "new", "1764200000.M1P1.sub"));
    execFileSync("mkfifo", [join(dir, "cur", "1764200001.M1P1.fifo:2,S")]);
    await writeFile(join(dir, "new", "1764200002.M1P1.real"), "Subject: x\r\n\r\nhi\r\n");
    const box = (await openStore(ns)).mailbox("odd@example.test");
    const listed = await box.list();
    expect(listed.map((m) => m.size)).toEqual([18]);
    expect(await readText(box.read(listed[0]!.uid))).toBe("Subject: x\r\n\r\nhi\r\n");
  });

  it("makes a maildir removed under the running store again: one delivery deferred, the next delivered", async () => {
    const ns = fresh();
    const store = await createFsStore({ root: ns, hostname: "test.host" });
    try {
      const id = "gone@example.test";
      const dir = locateMailbox(ns, id).dir;
      await store.deliver([id], text("Subject: 1\r\n\r\nA\r\n"));
      for (const body of ["small", "y".repeat(100_000)]) {
        await fsPromises.rm(dir, { recursive: true });
        // The stream is spent by then, so this one is deferred (451 in SMTP), never bounced.
        const error = await store.deliver([id], text(`Subject: 2\r\n\r\n${body}\r\n`)).catch((e: unknown) => e);
        expect(error).toMatchObject({ code: "temporary", temporary: true });
        await store.deliver([id], text(`Subject: 3\r\n\r\n${body}\r\n`));
        expect(await store.mailbox(id).list()).toHaveLength(1);
      }
      await fsPromises.rm(dir, { recursive: true });
      const lease = await store.mailbox(id).acquireLease({ holder: "test", ttlMs: 60_000 });
      expect(await store.mailbox(id).list()).toEqual([]);
      await lease.release();
    } finally {
      await store.close();
    }
  });

  it("maps file system errors to store error codes", async () => {
    const { fsError } = await import("../src/errors.js");
    const err = (code: string) => Object.assign(new Error(code), { code });
    expect(fsError(err("ENOSPC"), "write", "/x").code).toBe("no-space");
    expect(fsError(err("EDQUOT"), "write", "/x").code).toBe("no-space");
    // Deferred, not bounced: the operator fixes a permission or a read-only mount and the mail waits.
    expect(fsError(err("EACCES"), "write", "/x")).toMatchObject({ code: "unavailable", temporary: true, message: expect.stringContaining("(/x)") });
    expect(fsError(err("EROFS"), "write", "/x")).toMatchObject({ code: "unavailable", message: expect.stringContaining("(/x)") });
    for (const c of ["EMFILE", "ENFILE", "EAGAIN", "EBUSY"]) expect(fsError(err(c), "open", "/x").code).toBe("temporary");
    expect(fsError(err("ENOENT"), "read", "/x", { enoent: "not-found" }).code).toBe("not-found");
    expect(fsError(err("EIO"), "read", "/x").message).toMatch(/^maildir: /);
    expect(hasStoreErrorCode(fsError(err("ENOSPC"), "w", "/x"), "no-space")).toBe(true);
  });
});
