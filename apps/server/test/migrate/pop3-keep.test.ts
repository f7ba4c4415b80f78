import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { hashPassword, type Store } from "@mailroom/store";
import { copyStore, formatDovecotUidl, importDovecotMaildir } from "../../src/migrate/index.js";
import { availableBackends, type OpenedStore } from "./backends.js";
import { dovecotUnavailable, keepClient, startDovecot, type RealDovecot } from "./real-dovecot.js";
import { ALICE, ALICE_PASSWORD, seed } from "./seed.js";

/**
 * The promise of a migration, checked with real clients: a POP3 client that leaves mail on the
 * server and remembers UIDLs finds nothing new to download once the mail moved.
 */

const run = promisify(execFile);

interface Listening {
  readonly port: number;
  close(): Promise<void>;
}
type CreatePop3Server = (options: { store: Store; hostname: string; allowPlaintextAuth: boolean }) => {
  listen(options: { host: string; port: number }): Promise<{ readonly port: number; close(): Promise<void> }>;
  close(options?: { deadlineMs?: number }): Promise<void>;
};

// Loaded by a variable specifier: the POP3 package is built by another engineer in parallel.
async function loadPop3(): Promise<CreatePop3Server | null> {
  try {
    const spec = "@mailroom/pop3-protocol";
    const mod = (await import(spec)) as Record<string, unknown>;
    return typeof mod.createPop3Server === "function" ? (mod.createPop3Server as CreatePop3Server) : null;
  } catch {
    return null;
  }
}
const createPop3Server = await loadPop3();
const dovecotMissing = await dovecotUnavailable();
// CI sets this where it installed Dovecot, so that a broken install fails instead of skipping.
if (dovecotMissing && process.env.MAILROOM_REQUIRE_DOVECOT) throw new Error(`real Dovecot required: ${dovecotMissing}`);
const hasMpop = existsSync("/usr/bin/mpop");
// The strongest target available: a real on-disk adapter if one is built.
const targetBackend = (await availableBackends()).find((b) => b.name === "fs") ?? (await availableBackends())[0]!;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mr-pop3-keep-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function openTarget(): Promise<Store> {
  const opened: OpenedStore = await targetBackend.open();
  cleanups.push(() => opened.dispose());
  return opened.store;
}

async function serve(store: Store): Promise<Listening> {
  const server = createPop3Server!({ store, hostname: "mailroom.test", allowPlaintextAuth: true });
  const listener = await server.listen({ host: "127.0.0.1", port: 0 });
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await server.close({ deadlineMs: 2_000 });
    await listener.close().catch(() => {});
  };
  cleanups.push(close);
  return { port: listener.port, close };
}

/**
 * mpop in keep mode with its own UIDL file, delivering into an mbox. Returns how many messages the
 * mbox holds afterwards, so a second run against a migrated server must leave the count unchanged.
 */
async function mpopKeep(dir: string, port: number, user: string, password: string): Promise<number> {
  const conf = join(dir, "mpoprc");
  const mbox = join(dir, "mbox");
  await writeFile(
    conf,
    [
      "defaults",
      "tls off",
      "auth user",
      "keep on",
      "timeout 20",
      "account migrated",
      "host 127.0.0.1",
      `port ${port}`,
      `user ${user}`,
      `password ${password}`,
      `uidls_file ${join(dir, "mpop-uidls")}`,
      `delivery mbox ${mbox}`,
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
  await run("mpop", ["-C", conf, "-q", "migrated"], { timeout: 30_000 });
  const text = await readFile(mbox, "utf8").catch(() => "");
  return text.split("\n").filter((line) => line.startsWith("From ")).length;
}

describe.skipIf(!createPop3Server)("keep-mode POP3 clients after `store copy`", () => {
  it("a client that downloaded everything from the old store finds nothing new on the new one", async () => {
    const dir = await tempDir();
    const source = (await import("@mailroom/store/memory")).createMemoryStore();
    const seeded = await seed(source);
    const before = await serve(source);
    const first = await keepClient(before.port, ALICE, ALICE_PASSWORD, join(dir, "seen"));
    expect(first.fetched).toEqual(seeded.alice.map((m) => m.uid));
    const mpopBefore = hasMpop ? await mpopKeep(dir, before.port, ALICE, ALICE_PASSWORD) : 0;
    await before.close();

    const target = await openTarget();
    await copyStore(source, target);
    const after = await serve(target);
    const second = await keepClient(after.port, ALICE, ALICE_PASSWORD, join(dir, "seen"));
    expect(second.fetched).toEqual([]);
    expect(second.listing).toEqual(first.listing);
    if (hasMpop) {
      expect(mpopBefore).toBe(seeded.alice.length);
      expect(await mpopKeep(dir, after.port, ALICE, ALICE_PASSWORD)).toBe(seeded.alice.length);
    }
  });
});

describe.skipIf(!createPop3Server || dovecotMissing !== null)("keep-mode POP3 clients after a Dovecot import (real Dovecot)", () => {
  it("Mailroom lists exactly Dovecot's UIDLs and sizes; the client downloads only what it never saw", async () => {
    const dir = await tempDir();
    // Same login and password as on Mailroom: clients key their UIDL memory by user and host.
    const dovecot: RealDovecot = await startDovecot(ALICE, ALICE_PASSWORD);
    cleanups.push(() => dovecot.dispose());

    const messages = [
      "From: one@remote.test\nSubject: one\n\nfirst message\n",
      "From: two@remote.test\nSubject: two\n\n.a line that starts with a dot\n..and two dots\n",
      `From: three@remote.test\nSubject: three, a larger one\n\n${"the quick brown fox jumps over the lazy dog\n".repeat(3_000)}`,
      "From: four@remote.test\nSubject: four\n\nno final newline",
    ];
    for (const m of messages) await dovecot.save(m);
    // The poplib client downloads the first four and keeps them on the server; the fifth arrives later.
    const seenFile = join(dir, "seen");
    const atDovecot = await keepClient(dovecot.port, dovecot.user, dovecot.password, seenFile);
    expect(atDovecot.fetched).toHaveLength(4);
    await dovecot.save("From: five@remote.test\nSubject: five, arrived after the last check\n\nfifth\n");
    // mpop saw all five; a fresh client gives Dovecot's octets for every message.
    const mpopDir = join(dir, "mpop");
    await run("mkdir", [mpopDir]);
    if (hasMpop) expect(await mpopKeep(mpopDir, dovecot.port, dovecot.user, dovecot.password)).toBe(5);
    const reference = await keepClient(dovecot.port, dovecot.user, dovecot.password, join(dir, "fresh-dovecot"));
    expect(reference.listing).toHaveLength(5);

    // The formula Dovecot documents, applied to what doveadm reports, is what its POP3 server said.
    const numbering = await dovecot.numbering();
    const expected = numbering.uids.map((uid) =>
      formatDovecotUidl("%08Xu%08Xv", { uid, uidValidity: numbering.uidValidity, filename: "", guid: "" }),
    );
    expect(reference.listing.map(([uidl]) => uidl)).toEqual(expected);
    await dovecot.stop();

    const target = await openTarget();
    await target.directory.addDomain("example.test");
    const account = await target.directory.addAccount({ address: ALICE, passwordHash: await hashPassword(ALICE_PASSWORD, { logN: 10 }) });
    const report = await importDovecotMaildir(target, { maildir: dovecot.maildir, mailbox: account.mailbox });
    expect(report).toMatchObject({ messages: 5, imported: 5, skipped: 0, unlisted: 0, sizeMismatches: [], failures: [] });
    expect((await importDovecotMaildir(target, { maildir: dovecot.maildir, mailbox: account.mailbox })).imported).toBe(0);
    // What Dovecot saw as read (retrieved by POP3) stays retrieved for EXPIRE.
    expect((await target.mailbox(account.mailbox).list()).every((m) => m.retrievedAt !== null)).toBe(true);

    const mailroom = await serve(target);
    const afterImport = await keepClient(mailroom.port, ALICE, ALICE_PASSWORD, seenFile);
    expect(afterImport.listing).toEqual(reference.listing);
    expect(afterImport.fetched).toEqual([expected[4]]);
    const full = await keepClient(mailroom.port, ALICE, ALICE_PASSWORD, join(dir, "fresh-mailroom"));
    expect(full.sha256).toEqual(reference.sha256);
    if (hasMpop) expect(await mpopKeep(mpopDir, mailroom.port, ALICE, ALICE_PASSWORD)).toBe(5);
  });
});
