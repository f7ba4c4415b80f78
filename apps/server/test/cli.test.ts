import { chownSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyPassword } from "@mailroom/store";
import { BIN, cleanEnv, cleanup, python, runCli, tempDir, writeFile } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const mail = join(dir, "mail");
const config = writeFile(
  dir,
  "mailroom.toml",
  `hostname = "mail.example.test"
[store]
url = "maildir:./mail"
[smtp]
listen = ["127.0.0.1:0"]
submission = []
submissions = []
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
`,
);
const cli = (args: string[], stdin?: string) => runCli([...args, "--config", config], stdin === undefined ? {} : { stdin });

describe("mailroom CLI", () => {
  beforeAll(async () => {
    expect((await cli(["domain", "add", "Example.TEST"])).stdout).toBe("added domain example.test\n");
  });

  it("--version and --help", async () => {
    const version = await runCli(["--version"]);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^mailroom \d+\.\d+\.\d+\n$/);
    const help = await runCli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("user add ADDRESS");
  });

  it("adds a user with --password-stdin, stores only a hash, and lists it", async () => {
    const added = await cli(["user", "add", "Alice@example.test", "--password-stdin"], "correct horse\n");
    expect(added).toEqual({ code: 0, stdout: "added user alice@example.test\n", stderr: "" });

    const listed = await cli(["user", "list"]);
    expect(listed).toEqual({ code: 0, stdout: "alice@example.test\n", stderr: "" });
    expect((await cli(["user", "list", "other.test"])).stdout).toBe("");

    // The directory file holds a scrypt hash of the password (without the newline), never the password.
    const directory = readFileSync(join(mail, "mailroom-directory.json"), "utf8");
    expect(directory).not.toContain("correct horse");
    const hash = (JSON.parse(directory) as { accounts: Array<{ address: string; passwordHash: string }> }).accounts.find(
      (a) => a.address === "alice@example.test",
    )!.passwordHash;
    expect(hash).toMatch(/^\$scrypt\$/);
    expect(await verifyPassword("correct horse", hash)).toBe(true);

    const again = await cli(["user", "add", "alice@example.test", "--password-stdin"], "x\n");
    expect(again.code).toBe(1);
    expect(again.stderr).toBe("mailroom: user alice@example.test already exists\n");
  });

  it("changes a password and removes a user", async () => {
    await cli(["user", "add", "carol@example.test", "--password-stdin"], "one\n");
    expect((await cli(["user", "passwd", "carol@example.test", "--password-stdin"], "two\n")).stdout).toBe(
      "changed the password of carol@example.test\n",
    );
    const directory = JSON.parse(readFileSync(join(mail, "mailroom-directory.json"), "utf8")) as {
      accounts: Array<{ address: string; passwordHash: string }>;
    };
    expect(await verifyPassword("two", directory.accounts.find((a) => a.address === "carol@example.test")!.passwordHash)).toBe(true);
    expect((await cli(["user", "del", "carol@example.test"])).code).toBe(0);
    expect((await cli(["user", "list"])).stdout).not.toContain("carol");
    const missing = await cli(["user", "del", "carol@example.test"]);
    expect(missing).toMatchObject({ code: 1, stderr: "mailroom: no user carol@example.test\n" });
  });

  it("refuses an empty password and a missing terminal", async () => {
    const empty = await cli(["user", "add", "dave@example.test", "--password-stdin"], "\n");
    expect(empty).toMatchObject({ code: 2, stderr: "mailroom: the password is empty\n" });
    const noTty = await cli(["user", "add", "dave@example.test"]);
    expect(noTty.code).toBe(2);
    expect(noTty.stderr).toMatch(/^mailroom: no terminal to ask for the password: pipe it in with --password-stdin\n$/);
    expect((await cli(["user", "list"])).stdout).not.toContain("dave");
  });

  it("asks twice at a terminal without echoing, and refuses two different answers", async () => {
    // A real pseudo-terminal, driven like a person typing.
    const typeAt = `
import os, pty, sys, time, json
pid, fd = pty.fork()
if pid == 0:
    os.execvpe(sys.argv[1], sys.argv[1:5] + sys.argv[8:11], json.loads(sys.argv[7]))
out = b""
def until(token):
    global out
    end = time.time() + 15
    while token not in out and time.time() < end:
        try:
            out += os.read(fd, 1024)
        except OSError:
            return
until(b"New password: ")
os.write(fd, sys.argv[5].encode() + b"\\r")
until(b"Repeat password: ")
os.write(fd, sys.argv[6].encode() + b"\\r")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
print(json.dumps({"out": out.decode(), "code": os.WEXITSTATUS(status)}))
`;
    const env = JSON.stringify(cleanEnv());
    // argv: node, bin, "user", "add" | first answer, second answer, environment | address, --config, file
    const run = async (address: string, first: string, second: string) =>
      JSON.parse(await python(typeAt, [process.execPath, BIN, "user", "add", first, second, env, address, "--config", config])) as {
        out: string;
        code: number;
      };
    const ok = await run("tty@example.test", "typed secret", "typed secret");
    expect(ok.code).toBe(0);
    expect(ok.out).toBe("New password: \r\nRepeat password: \r\nadded user tty@example.test\r\n");
    expect(ok.out).not.toContain("typed secret");

    const differ = await run("tty2@example.test", "one", "two");
    expect(differ.code).toBe(2);
    expect(differ.out).toContain("mailroom: the passwords do not match");
    expect((await cli(["user", "list"])).stdout).not.toContain("tty2");
  });

  it("refuses a user in a domain that is not local, and a malformed address", async () => {
    const foreign = await cli(["user", "add", "eve@elsewhere.test", "--password-stdin"], "pw\n");
    expect(foreign).toMatchObject({ code: 1 });
    expect(foreign.stderr).toBe("mailroom: the domain elsewhere.test is not local; add it first: mailroom domain add elsewhere.test\n");
    const bad = await cli(["user", "add", "not-an-address", "--password-stdin"], "pw\n");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^mailroom: address: invalid address "not-an-address"/);
  });

  it("manages domains and aliases", async () => {
    expect((await cli(["domain", "add", "lists.test"])).code).toBe(0);
    expect((await cli(["domain", "list"])).stdout).toBe("example.test\nlists.test\n");
    expect((await cli(["alias", "add", "Postmaster@example.test", "alice@example.test"])).stdout).toBe(
      "added alias postmaster@example.test -> alice@example.test\n",
    );
    expect((await cli(["alias", "add", "@lists.test", "alice@example.test"])).code).toBe(0);
    expect((await cli(["alias", "list"])).stdout).toBe("postmaster@example.test -> alice@example.test\n@lists.test -> alice@example.test\n");
    expect((await cli(["alias", "list", "lists.test"])).stdout).toBe("@lists.test -> alice@example.test\n");

    const busy = await cli(["domain", "del", "lists.test"]);
    expect(busy).toMatchObject({ code: 1, stderr: "mailroom: domain lists.test still has users or aliases; remove them first\n" });
    expect((await cli(["alias", "del", "@lists.test"])).stdout).toBe("removed alias @lists.test\n");
    expect((await cli(["domain", "del", "lists.test"])).stdout).toBe("removed domain lists.test\n");
    expect((await cli(["domain", "list"])).stdout).toBe("example.test\n");
    expect((await cli(["alias", "del", "nobody@example.test"])).stderr).toBe("mailroom: no alias nobody@example.test\n");
  });

  it("refuses an alias whose source or target is not in a local domain", async () => {
    // A foreign target would be skipped by local delivery: mail to the alias would get a 250 and
    // never reach it.
    const foreignTarget = await cli(["alias", "add", "fwd@example.test", "friend@elsewhere.test"]);
    expect(foreignTarget).toMatchObject({
      code: 1,
      stderr:
        "mailroom: the target friend@elsewhere.test is not in a local domain; aliases deliver only to local addresses (forwarding to other domains is not supported)\n",
    });
    const foreignSource = await cli(["alias", "add", "@elsewhere.test", "alice@example.test"]);
    expect(foreignSource).toMatchObject({
      code: 1,
      stderr: "mailroom: the domain elsewhere.test is not local; add it first: mailroom domain add elsewhere.test\n",
    });
    const list = (await cli(["alias", "list"])).stdout;
    expect(list).not.toContain("elsewhere.test");
  });

  it("says on stderr when a command without --config works on the development store", async () => {
    const result = await runCli(["user", "list"], { cwd: tempDir("devcli") });
    expect(result).toEqual({
      code: 0,
      stdout: "",
      stderr: "mailroom: no --config (or MAILROOM_CONFIG): using the development setup's store in ./data\n",
    });
  });

  it("says there is nothing to migrate for Maildir", async () => {
    expect(await cli(["migrate"])).toEqual({ code: 0, stdout: "nothing to do: the maildir store has no schema to migrate\n", stderr: "" });
  });

  it("exits 2 on usage errors", async () => {
    const unknown = await runCli(["frobnicate"]);
    expect(unknown).toMatchObject({ code: 2, stderr: 'mailroom: unknown command "frobnicate" (see mailroom --help)\n' });
    const option = await runCli(["user", "list", "--colour"]);
    expect(option.code).toBe(2);
    expect(option.stderr).toMatch(/^mailroom: Unknown option '--colour'/);
    const arity = await cli(["alias", "add", "a@example.test"]);
    expect(arity).toMatchObject({ code: 2, stderr: "mailroom: usage: mailroom alias add SOURCE TARGET (see mailroom --help)\n" });
  });

  it("exits 2 with one line naming the file and key for a bad config", async () => {
    const bad = writeFile(dir, "bad.toml", `hostname = "x"\n[store]\nurl = "maildir:./m"\n[smtp]\nlisten = ["nowhere"]\n`);
    const result = await runCli(["user", "list", "--config", bad]);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toBe(`mailroom: ${bad}: smtp.listen: "nowhere" is not "host:port" (e.g. "0.0.0.0:25" or "[::]:25")\n`);

    const scheme = writeFile(dir, "scheme.toml", `hostname = "x"\n[store]\nurl = "mysql://db"\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`);
    const unknownScheme = await runCli(["serve", "--config", scheme]);
    expect(unknownScheme.code).toBe(2);
    expect(unknownScheme.stderr).toMatch(new RegExp(`^mailroom: ${scheme.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: store\\.url: no store adapter for the scheme "mysql:"`));
  });

  it("exits 2 naming the file and the key for a bad store option value or a malformed store URL", async () => {
    const cases = [
      { store: 'url = "maildir:./m"\nfsync = "yes"', key: "store.fsync", says: "maildir: option fsync must be a boolean" },
      {
        store: 'url = "postgres://127.0.0.1/mailroom_never_created"\npool_size = "ten"',
        key: "store.pool_size",
        says: 'postgres store option "pool_size" must be an integer from 1 to 1000 (got "ten")',
      },
      {
        // An unencoded "@" in the password and an unclosed "[": the message must not repeat the password.
        store: 'url = "postgres://postgres:s3cret@pw@[::1:5432/db"',
        key: "store.url",
        says: "not a valid URL (check the host and port, and percent-encode @ : / ? # % in the user name and password)",
      },
    ];
    for (const [i, { store, key, says }] of cases.entries()) {
      const file = writeFile(dir, `store-option-${i}.toml`, `hostname = "x"\n[store]\n${store}\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`);
      // `migrate` opens no Maildir store, so it has nothing to say about one.
      for (const command of store.includes("postgres") ? [["user", "list"], ["migrate"]] : [["user", "list"]]) {
        const result = await runCli([...command, "--config", file]);
        expect(result, command.join(" ")).toMatchObject({ code: 2, stdout: "", stderr: `mailroom: ${file}: ${key}: ${says}\n` });
      }
    }
  });

  it.skipIf(process.getuid?.() !== 0)("refuses admin commands as root on a Maildir store that belongs to another user", async () => {
    const mail = join(dir, "owned-mail");
    mkdirSync(mail, { recursive: true });
    chownSync(mail, 65534, 65534);
    const file = writeFile(dir, "owned.toml", `hostname = "x"\n[store]\nurl = "maildir:${mail}"\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`);
    const refusal = (label: string, root: string) =>
      `mailroom: ${label}: ${root} belongs to uid 65534, not root; run admin commands as that user (e.g. sudo -u '#65534' mailroom ...), or files they make will be unreadable to the server\n`;
    for (const command of [["domain", "add", "example.test"], ["queue", "list"], ["import", "dovecot", "--maildir", dir, "--address", "a@example.test"]]) {
      const result = await runCli([...command, "--config", file]);
      expect(result, command.join(" ")).toMatchObject({ code: 2, stderr: refusal(`${file}: store.url`, mail) });
    }
    // A copy into a store of that user's, also one not made yet inside a folder of theirs.
    const source = writeFile(dir, "own-source.toml", `hostname = "x"\n[store]\nurl = "maildir:${join(dir, "root-mail")}"\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`);
    for (const target of [mail, join(mail, "not-yet")]) {
      const result = await runCli(["store", "copy", "--to", `maildir:${target}`, "--config", source]);
      expect(result).toMatchObject({ code: 2, stderr: refusal("--to", target) });
    }
    // Nothing was made under it as root.
    expect(readdirSync(mail)).toEqual([]);
  });

  it("refuses to serve with a certificate that is not one, naming the keys", async () => {
    writeFile(dir, "junk-cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    writeFile(dir, "junk-key.pem", "nothing\n");
    const file = writeFile(
      dir,
      "junk-tls.toml",
      `hostname = "localhost"\n[store]\nurl = "maildir:./mail"\n[smtp]\nlisten = ["127.0.0.1:0"]\nsubmission = []\nsubmissions = []\n[pop3]\nlisten = ["127.0.0.1:0"]\npop3s = []\n[tls]\ncert = "junk-cert.pem"\nkey = "junk-key.pem"\n`,
    );
    const result = await runCli(["serve", "--config", file]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(new RegExp(`^mailroom: ${file.replace(/[.*+?^\${}()|[\]\\]/g, "\\$&")}: tls\\.cert / tls\\.key: not a usable certificate and key \\(${join(dir, "junk-cert.pem")}, ${join(dir, "junk-key.pem")}\\): .+\\n$`));
  });

  it("names the environment variable when an override is bad", async () => {
    const result = await runCli(["user", "list", "--config", config], { env: { MAILROOM_SMTP_MAX_RECIPIENTS: "many" } });
    expect(result).toMatchObject({ code: 2, stderr: 'mailroom: MAILROOM_SMTP_MAX_RECIPIENTS: expected an integer, got the string "many"\n' });
  });

  describe("serve on a port in use", () => {
    let blocker: Server;
    let port: number;
    beforeAll(async () => {
      blocker = createServer();
      await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
      port = (blocker.address() as { port: number }).port;
    });
    afterAll(() => new Promise<void>((resolve) => blocker.close(() => resolve())));

    it("fails naming the key and the address", async () => {
      const file = writeFile(
        dir,
        "busy.toml",
        `hostname = "localhost"\n[store]\nurl = "maildir:./mail"\n[smtp]\nlisten = ["127.0.0.1:0"]\nsubmission = []\nsubmissions = []\n[pop3]\nlisten = ["127.0.0.1:${port}"]\npop3s = []\n`,
      );
      const result = await runCli(["serve", "--config", file]);
      expect(result.code).toBe(1);
      expect(result.stderr).toBe(`mailroom: ${file}: pop3.listen: cannot listen on 127.0.0.1:${port}: address already in use\n`);
    });
  });
});
