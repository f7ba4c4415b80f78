import { describe, expect, it } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import { chmod, mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { locateMailbox } from "../src/index.js";
import { openStore, readText, tempRoot, text } from "./helpers.js";

/**
 * Interop with the real Dovecot (2.3): Dovecot reads what Mailroom wrote, and Mailroom serves what
 * Dovecot delivered. Dovecot runs without its daemons: `doveadm -o mail_location=maildir:<dir>` works
 * on one maildir as the INBOX, and needs only a config file with a mail uid (never root).
 */
const doveadmPath = spawnSync("sh", ["-c", "command -v doveadm"], { encoding: "utf8" }).stdout.trim();
const haveDovecot = doveadmPath.length > 0;
if (!haveDovecot) {
  console.warn("store-fs: doveadm not installed, Dovecot interop test skipped (see README, 'Checking Dovecot interop by hand')");
}

function idOf(user: string, group: string): string {
  return execFileSync("sh", ["-c", `getent ${group} ${user} | cut -d: -f3`], { encoding: "utf8" }).trim();
}

const base = await tempRoot("dovecot");

async function setup(): Promise<{ root: string; doveadm: (dir: string, args: string[], input?: string) => string }> {
  await chmod(base, 0o777);
  const home = join(base, "home");
  await mkdir(home, { recursive: true });
  // Dovecot refuses to touch mail as root; use nobody then, and open the test tree up to it.
  const root = process.getuid?.() === 0;
  const uid = root ? idOf("nobody", "passwd") : String(process.getuid?.() ?? "");
  const gid = root ? idOf("nogroup", "group") || idOf("nobody", "group") : String(process.getgid?.() ?? "");
  const conf = join(base, "dovecot.conf");
  await writeFile(
    conf,
    [
      `base_dir = ${join(base, "run")}`,
      `state_dir = ${join(base, "state")}`,
      `log_path = ${join(base, "dovecot.log")}`,
      "ssl = no",
      `mail_uid = ${uid}`,
      `mail_gid = ${gid}`,
      "first_valid_uid = 1",
      "first_valid_gid = 1",
      "",
    ].join("\n"),
  );
  const doveadm = (dir: string, args: string[], input?: string): string =>
    execFileSync(doveadmPath, ["-f", "json", "-c", conf, "-o", `mail_location=maildir:${dir}`, ...args], {
      input: input ?? "",
      encoding: "utf8",
      timeout: 20_000,
      env: { ...process.env, HOME: home, USER: "mailroom-test" },
    });
  return { root: join(base, "mail"), doveadm };
}

async function openUp(dir: string): Promise<void> {
  await chmod(dir, 0o777);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await openUp(path);
    else await chmod(path, 0o666);
  }
}

interface Fetched {
  "size.virtual": string;
  flags: string;
  text: string;
}

describe("Dovecot interop", () => {
  it.skipIf(!haveDovecot)("Dovecot reads what Mailroom wrote, and Mailroom serves what Dovecot delivered", async () => {
    const { root, doveadm } = await setup();
    const store = await openStore(root);

    // Mailroom → Dovecot
    const id = "alice@example.test";
    const box = store.mailbox(id);
    const one = "Subject: one\r\nFrom: a@example.test\r\n\r\nfirst body\r\n";
    const two = "Subject: two\r\n\r\nsecond\r\nbody\r\n";
    const a = await box.append(text(one));
    const b = await box.append(text(two));
    const lease = await box.acquireLease({ holder: "test", ttlMs: 10_000 });
    await box.markRetrieved([a.uid], lease);
    await lease.release();
    const dir = locateMailbox(root, id).dir;
    await openUp(root);
    const seen = JSON.parse(doveadm(dir, ["fetch", "size.virtual flags text", "all"])) as Fetched[];
    // Our files are stored with the CRLF the client sent; Dovecot hands them out as they are.
    expect(seen.map((m) => m.text)).toEqual([one, two]);
    expect(seen.map((m) => Number(m["size.virtual"]))).toEqual([a.size, b.size]);
    expect(seen[0]!.flags).toContain("\\Seen");
    expect(seen[1]!.flags).not.toContain("\\Seen");
    // Dovecot moved the new one to cur/ and keeps its index files next to ours: uids do not move.
    expect((await box.list()).map((m) => m.uid)).toEqual([a.uid, b.uid]);

    // Dovecot → Mailroom
    const other = "bob@example.test";
    const bobDir = locateMailbox(root, other).dir;
    doveadm(bobDir, ["save"], "Subject: lda\nFrom: x@y.test\n\nhello\nworld\n");
    doveadm(bobDir, ["save"], "Subject: second\n\n.\nend\n");
    await openUp(root);
    const bob = (await openStore(root)).mailbox(other);
    const list = await bob.list();
    expect(list).toHaveLength(2);
    const expected = ["Subject: lda\r\nFrom: x@y.test\r\n\r\nhello\r\nworld\r\n", "Subject: second\r\n\r\n.\r\nend\r\n"];
    expect(list.map((m) => m.size)).toEqual(expected.map((s) => Buffer.byteLength(s)));
    expect(await readText(bob.read(list[0]!.uid))).toBe(expected[0]);
    expect(await readText(bob.read(list[1]!.uid))).toBe(expected[1]);
    expect(await readText(bob.read(list[0]!.uid, { bodyLines: 1 }))).toBe("Subject: lda\r\nFrom: x@y.test\r\n\r\nhello\r\n");
    const again = await (await openStore(root)).mailbox(other).list();
    expect(again).toEqual(list);

    // Dovecot flags a message (another IMAP client reading it): the uid stays.
    doveadm(bobDir, ["flags", "add", "\\Seen \\Answered", "all"]);
    await openUp(root);
    expect((await (await openStore(root)).mailbox(other).list()).map((m) => m.uid)).toEqual(list.map((m) => m.uid));

    // A Mailroom expunge is what Dovecot sees next.
    const bobLease = await bob.acquireLease({ holder: "test", ttlMs: 10_000 });
    expect(await bob.expunge([list[0]!.uid], bobLease)).toBe(1);
    await bobLease.release();
    const left = JSON.parse(doveadm(bobDir, ["fetch", "size.virtual flags text", "all"])) as Fetched[];
    expect(left.map((m) => m.text)).toEqual(["Subject: second\n\n.\nend\n"]);
  });
});
