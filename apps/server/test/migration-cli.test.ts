/** The command-line side of the migration tools: `store copy` and `import dovecot` (logic: test/migrate). */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createFsStore } from "@mailroom/store-fs";
import { cleanup, runCli, tempDir, writeFile } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const config = writeFile(
  dir,
  "mailroom.toml",
  `hostname = "mail.example.test"\n[store]\nurl = "maildir:./old"\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`,
);
const cli = (args: string[], stdin?: string) => runCli([...args, "--config", config], stdin === undefined ? { cwd: dir } : { stdin, cwd: dir });

describe("store copy", () => {
  it("copies the configured store to another one and verifies it; a second run copies nothing", async () => {
    expect((await cli(["domain", "add", "example.test"])).code).toBe(0);
    expect((await cli(["user", "add", "alice@example.test", "--password-stdin"], "pw\n")).code).toBe(0);
    expect((await cli(["alias", "add", "postmaster@example.test", "alice@example.test"])).code).toBe(0);

    const target = `maildir:${join(dir, "new")}`;
    const first = await cli(["store", "copy", "--to", target, "--verify"]);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("domains: 1 copied, 0 skipped\naccounts: 1 copied, 0 skipped\naliases: 1 copied, 0 skipped\n");
    expect(first.stdout).toMatch(/\nverify: ok \(\d+ mailboxes, 0 messages\)\n$/);

    const again = await cli(["store", "copy", "--to", target]);
    expect(again.stdout).toContain("domains: 0 copied, 1 skipped\naccounts: 0 copied, 1 skipped\n");

    const listed = await runCli(["user", "list", "--config", config], { env: { MAILROOM_STORE_URL: target } });
    expect(listed.stdout).toBe("alice@example.test\n");
  });

  it("refuses wrong flags with exit 2", async () => {
    expect(await cli(["store", "copy"])).toMatchObject({ code: 2, stderr: expect.stringMatching(/^mailroom: store copy needs --to URL/) });
    expect(await cli(["store", "copy", "--to", "nowhere"])).toMatchObject({ code: 2, stderr: expect.stringMatching(/^mailroom: --to: "nowhere" is not a store URL/) });
    expect(await cli(["store", "copy", "--to", "mysql://x"])).toMatchObject({ code: 2, stderr: expect.stringMatching(/^mailroom: --to: no store adapter for the scheme "mysql:"/) });
    expect(await cli(["user", "list", "--prune"])).toMatchObject({ code: 2, stderr: "mailroom: --prune only goes with store copy (see mailroom --help)\n" });
  });
});

describe("import dovecot", () => {
  it("imports a Dovecot Maildir into an account with Dovecot's UIDLs", async () => {
    const maildir = join(dir, "Maildir");
    for (const sub of ["cur", "new", "tmp"]) mkdirSync(join(maildir, sub), { recursive: true });
    writeFileSync(join(maildir, "dovecot-uidlist"), "3 V1795747366 N2 G5406ce1d26ee086b0758000083ecc375\n1 :1795747366.M1P1.host,S=27,W=30\n");
    writeFileSync(join(maildir, "cur", "1795747366.M1P1.host,S=27,W=30:2,S"), "Subject: old\n\nfrom dovecot\n");
    expect((await cli(["user", "add", "bob@example.test", "--password-stdin"], "pw\n")).code).toBe(0);

    const result = await cli(["import", "dovecot", "--maildir", maildir, "--address", "Bob@example.test"]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^messages: 1 found, 1 imported, 0 skipped, 0 failed\n/);

    // Dovecot's default pop3_uidl_format %08Xu%08Xv: UID 1, UIDVALIDITY 1795747366 = 0x6b08ee26.
    const store = await createFsStore({ root: join(dir, "old") });
    const account = await store.directory.getAccount("bob@example.test");
    const listed = await store.mailbox(account!.mailbox).list();
    await store.close();
    expect(listed.map((m) => [m.uid, m.size])).toEqual([["000000016b08ee26", 30]]);

    const again = await cli(["import", "dovecot", "--maildir", maildir, "--address", "bob@example.test"]);
    expect(again.stdout).toMatch(/^messages: 1 found, 0 imported, 1 skipped, 0 failed\n/);

    const nobody = await cli(["import", "dovecot", "--maildir", maildir, "--address", "nobody@example.test"]);
    expect(nobody).toMatchObject({ code: 1, stderr: "mailroom: no user nobody@example.test; add it first: mailroom user add nobody@example.test\n" });
  });
});
