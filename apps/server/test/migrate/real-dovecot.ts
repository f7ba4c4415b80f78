import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

const DOVECOT = "/usr/sbin/dovecot";
const DOVEADM = "/usr/bin/doveadm";
// Dovecot refuses mail access as root, so mail belongs to this unprivileged user.
const MAIL_UID = 65534;
const MAIL_GID = 65534;

/**
 * Why a real Dovecot cannot run here, or null if it can. The master process has to start as root
 * (it switches its auth and login processes to the `dovecot`/`dovenull` users).
 */
export async function dovecotUnavailable(): Promise<string | null> {
  if (!existsSync(DOVECOT) || !existsSync(DOVEADM)) return "dovecot/doveadm not installed";
  if (process.getuid?.() !== 0) return "starting a Dovecot master needs root";
  try {
    await run("id", ["dovecot"]);
    await run("id", ["dovenull"]);
  } catch {
    return "the dovecot and dovenull users are missing";
  }
  return null;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface RealDovecot {
  readonly port: number;
  readonly user: string;
  readonly password: string;
  /** The user's Maildir (INBOX). */
  readonly maildir: string;
  /** Delivers one message through Dovecot (`doveadm save`), which numbers it in dovecot-uidlist. */
  save(message: string): Promise<void>;
  /** Dovecot's own view of INBOX, asked through doveadm: UIDVALIDITY and every UID. */
  numbering(): Promise<{ uidValidity: number; uids: number[] }>;
  /** Stops the master (by its pid); the Maildir stays. */
  stop(): Promise<void>;
  /** Stops it if needed and removes the directory. */
  dispose(): Promise<void>;
}

/** Starts a private Dovecot (POP3 only, one passwd-file user) in a temp dir on a free loopback port. */
export async function startDovecot(user = "alice@example.test", password = `pw-${randomBytes(4).toString("hex")}`): Promise<RealDovecot> {
  const dir = await mkdtemp(join(tmpdir(), "mr-dovecot-real-"));
  // The auth process (user dovecot) and the mail processes (uid 65534) must reach the files.
  await chmod(dir, 0o755);
  const maildir = join(dir, "mail");
  const home = join(dir, "home");
  await mkdir(home);
  await chown(home, MAIL_UID, MAIL_GID);
  await mkdir(maildir);
  await chown(maildir, MAIL_UID, MAIL_GID);
  await mkdir(join(dir, "run"));
  await mkdir(join(dir, "state"));
  await writeFile(join(dir, "passwd"), `${user}:{PLAIN}${password}:${MAIL_UID}:${MAIL_GID}::${home}::\n`, { mode: 0o644 });
  const port = await freePort();
  const conf = join(dir, "dovecot.conf");
  await writeFile(
    conf,
    [
      `instance_name = mr-import-${randomBytes(4).toString("hex")}`,
      `base_dir = ${dir}/run`,
      `state_dir = ${dir}/state`,
      `log_path = ${dir}/dovecot.log`,
      "ssl = no",
      "protocols = pop3",
      "listen = 127.0.0.1",
      "disable_plaintext_auth = no",
      `mail_location = maildir:${maildir}`,
      `mail_uid = ${MAIL_UID}`,
      `mail_gid = ${MAIL_GID}`,
      "first_valid_uid = 1",
      "first_valid_gid = 1",
      "pop3_uidl_format = %08Xu%08Xv",
      `passdb {\n  driver = passwd-file\n  args = ${dir}/passwd\n}`,
      `userdb {\n  driver = passwd-file\n  args = ${dir}/passwd\n}`,
      // Port 0 turns POP3S off, so the instance listens on its one free port only.
      `service pop3-login {\n  inet_listener pop3 {\n    address = 127.0.0.1\n    port = ${port}\n  }\n  inet_listener pop3s {\n    port = 0\n  }\n}`,
      "",
    ].join("\n"),
  );
  // The master daemonizes; its children inherit stdio, so wait for the exit, not for the pipes.
  await new Promise<void>((resolve, reject) => {
    const child = spawn(DOVECOT, ["-c", conf], { stdio: "ignore" });
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`dovecot exited ${code}`))));
  });
  const pidFile = join(dir, "run", "master.pid");

  async function stop(): Promise<void> {
    const pid = Number((await readFile(pidFile, "utf8").catch(() => "")).trim());
    if (pid > 0) {
      try {
        process.kill(pid, "SIGTERM");
      } catch {
        // already gone
      }
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          break;
        }
        await sleep(100);
      }
    }
  }

  async function dispose(): Promise<void> {
    await stop();
    await rm(dir, { recursive: true, force: true });
  }

  try {
    for (let i = 0; !(await canConnect(port)); i++) {
      if (i > 100) throw new Error(`dovecot did not listen on ${port}: ${await readFile(join(dir, "dovecot.log"), "utf8").catch(() => "")}`);
      await sleep(100);
    }
  } catch (error) {
    await dispose();
    throw error;
  }

  return {
    port,
    user,
    password,
    maildir,
    async save(message: string) {
      await new Promise<void>((resolve, reject) => {
        const child = spawn(DOVEADM, ["-c", conf, "save", "-u", user], { stdio: ["pipe", "ignore", "pipe"] });
        let stderr = "";
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
        child.once("error", reject);
        child.once("close", (code) => {
          clearTimeout(timer);
          if (code === 0) resolve();
          else reject(new Error(`doveadm save exited ${code}: ${stderr}`));
        });
        child.stdin.end(message);
      });
    },
    async numbering() {
      const status = await run(DOVEADM, ["-c", conf, "mailbox", "status", "-u", user, "uidvalidity", "INBOX"], { timeout: 15_000 });
      const fetched = await run(DOVEADM, ["-c", conf, "fetch", "-u", user, "uid", "all"], { timeout: 15_000 });
      const validity = /uidvalidity=(\d+)/.exec(status.stdout);
      if (!validity) throw new Error(`unexpected doveadm output: ${status.stdout}`);
      const uids = [...fetched.stdout.matchAll(/uid: (\d+)/g)].map((m) => Number(m[1]));
      return { uidValidity: Number(validity[1]), uids };
    },
    stop,
    dispose,
  };
}

/** Runs the keep-mode POP3 client (Python poplib). */
export interface KeepClientResult {
  readonly listing: [string, number][];
  readonly fetched: string[];
  readonly sha256: Record<string, string>;
}

export const KEEP_CLIENT = new URL("./fixtures/pop3_keep_client.py", import.meta.url).pathname;

export async function keepClient(port: number, user: string, password: string, seenFile: string): Promise<KeepClientResult> {
  const { stdout } = await run("python3", [KEEP_CLIENT, "127.0.0.1", String(port), user, password, seenFile], {
    timeout: 30_000,
  });
  return JSON.parse(stdout) as KeepClientResult;
}
