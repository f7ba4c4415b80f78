// The servers under test. Mailroom is started here from this checkout with a throw-away config; the
// reference Postfix + Dovecot and the Node smtp-server peer are brought up with the scripts in
// shared/ref, so every figure of one run comes from the same machine at the same time.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cpuMsOfCommand } from "./proc.js";

export interface Target {
  readonly label: string;
  readonly smtpPort: number;
  readonly pop3Port: number | null;
  readonly pop3sPort: number | null;
  /** pid or pidfile specs for the drivers' CPU/memory accounting. */
  readonly pidSpecs: readonly string[];
  /** The ingest recipient's Maildir when it is on this machine (for "found delivered"). */
  readonly ingestMaildir: string | null;
  /** The POP3 login for a bench user (`pop1` → `pop1@example.test`, or `pop1` with a default realm). */
  login(user: string): string;
  /** Fresh process, so idle-memory baselines are not polluted by the previous run. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  /** The main pid (Mailroom only: single process). */
  pid(): number | null;
  /** CPU ms used so far by the database server behind the target (the PostgreSQL and Redis stores). */
  databaseCpuMs?(): number;
}

export const DOMAIN = "example.test";
export const PASSWORD = "popbench";
export const USERS = ["ingest", "pop1", "pop2", "pop3", "pop4", "big1", "big2", "big3", "big4"];

async function waitPort(port: number, ms = 30_000): Promise<void> {
  const { connect } = await import("node:net");
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: "127.0.0.1", port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface MailroomTargetOptions {
  readonly repo: string;
  readonly dir: string;
  readonly store: "fs" | "postgres" | "redis";
  readonly basePort: number;
  readonly stamp: string;
  /** `[server] workers`: a number or "auto". */
  readonly workers: string;
}

export async function mailroomTarget(options: MailroomTargetOptions): Promise<Target> {
  const { repo, dir, store, basePort, stamp, workers } = options;
  mkdirSync(dir, { recursive: true });
  const cli = join(repo, "apps/server/bin/mailroom.js");
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  if (!existsSync(cert)) {
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert], { stdio: "ignore" });
  }
  const mailRoot = join(dir, "mail");
  const storeLines =
    store === "fs"
      ? [`url = "maildir:${mailRoot}"`]
      : store === "postgres"
        ? [`url = "postgres://postgres@127.0.0.1:5432/postgres"`, `schema = "mr_bench_${stamp}"`]
        : [`url = "redis://127.0.0.1:6379"`, `prefix = "mrbench:${stamp}:"`];
  const ports = { smtp: basePort + 25, pop3: basePort + 110, pop3s: basePort + 995 };
  const config = join(dir, "mailroom.toml");
  writeFileSync(config, [
    `hostname = "bench.example.test"`,
    `[store]`, ...storeLines,
    // Room for the 50 MB message of the big-message suite (the default limit is 25 MiB).
    `[smtp]`, `listen = ["127.0.0.1:${ports.smtp}"]`, `submission = []`, `submissions = []`, `max_message_size = 62914560`,
    // The drivers send 64 connections and hold 10,000 idle ones from one address.
    `[limits]`, `max_connections = 20000`, `max_connections_per_address = 20000`,
    `[pop3]`, `listen = ["127.0.0.1:${ports.pop3}"]`, `pop3s = ["127.0.0.1:${ports.pop3s}"]`, `allow_plaintext_auth = true`,
    `[tls]`, `cert = "${cert}"`, `key = "${key}"`,
    `[log]`, `level = "warn"`,
    `[server]`, `workers = ${/^\d+$/.test(workers) ? workers : JSON.stringify(workers)}`, ``,
  ].join("\n"));
  const admin = (args: string[], input = "") =>
    execFileSync(process.execPath, [cli, ...args, "--config", config], { input, stdio: ["pipe", "ignore", "inherit"] });
  admin(["domain", "add", DOMAIN]);
  for (const user of USERS) admin(["user", "add", `${user}@${DOMAIN}`, "--password-stdin"], `${PASSWORD}\n`);
  // The ingest driver counts files in the Maildir and refuses one without new/: make it exist up front.
  if (store === "fs") for (const sub of ["new", "cur", "tmp"]) mkdirSync(join(mailRoot, DOMAIN, "ingest", sub), { recursive: true });

  const pidfile = join(dir, "mailroom.pid");
  let child: ChildProcess | null = null;
  const start = async (): Promise<void> => {
    // exec keeps the pid, so the pidfile names the server itself, with room for 10,000+ sockets.
    child = spawn("sh", ["-c", `ulimit -n $(ulimit -Hn); exec "$0" "$@"`, process.execPath, cli, "serve", "--config", config], {
      stdio: ["ignore", "ignore", "inherit"],
    });
    writeFileSync(pidfile, `${child.pid}\n`);
    await waitPort(ports.pop3);
    await waitPort(ports.smtp);
  };
  const stop = async (): Promise<void> => {
    const running = child;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once("exit", resolve));
    running.kill("SIGTERM");
    const timer = setTimeout(() => running.kill("SIGKILL"), 15_000);
    await exited;
    clearTimeout(timer);
  };
  // What the run leaves in the shared PostgreSQL and Redis goes with the target (the fs store's data
  // lives in the work directory, which main.ts removes).
  const dropData = (): void => {
    const run = (command: string, args: string[]): void => {
      try {
        execFileSync(command, args, { stdio: "ignore", timeout: 60_000 });
      } catch {
        console.error(`bench: could not remove the benchmark's data (${command} ${args.join(" ")}); remove it by hand`);
      }
    };
    if (store === "postgres") {
      run("psql", ["-h", "127.0.0.1", "-U", "postgres", "-qAtc", `DROP SCHEMA IF EXISTS "mr_bench_${stamp}" CASCADE`]);
    } else if (store === "redis") {
      const script = "local c='0' repeat local r=redis.call('SCAN',c,'MATCH',ARGV[1]..'*','COUNT',1000) c=r[1] for _,k in ipairs(r[2]) do redis.call('DEL',k) end until c=='0' return 0";
      run("redis-cli", ["-h", "127.0.0.1", "-p", "6379", "EVAL", script, "0", `mrbench:${stamp}:`]);
    }
  };
  await start();
  const databaseCommand = store === "postgres" ? "postgres" : store === "redis" ? "redis-server" : null;
  return {
    label: `mailroom-${store}`,
    ...(databaseCommand === null ? {} : { databaseCpuMs: () => cpuMsOfCommand(databaseCommand) }),
    smtpPort: ports.smtp,
    pop3Port: ports.pop3,
    pop3sPort: ports.pop3s,
    pidSpecs: [pidfile],
    ingestMaildir: store === "fs" ? join(mailRoot, DOMAIN, "ingest") : null,
    login: (user) => `${user}@${DOMAIN}`,
    restart: async () => {
      await stop();
      await start();
    },
    stop: async () => {
      await stop();
      dropData();
    },
    pid: () => child?.pid ?? null,
  };
}

/** Postfix (SMTP) + Dovecot (POP3) from shared/ref, users created with its adduser.sh. */
export async function referenceTarget(refTools: string): Promise<Target> {
  const env = { ...process.env };
  const refDir = env.REF_DIR ?? "/tmp/ref-a";
  const up = () => execFileSync(join(refTools, "ref/up.sh"), { stdio: ["ignore", "ignore", "inherit"], env });
  up();
  for (const user of USERS) execFileSync(join(refTools, "ref/adduser.sh"), [user, PASSWORD], { stdio: "ignore", env });
  return {
    label: "postfix+dovecot",
    smtpPort: 30025,
    pop3Port: 30110,
    pop3sPort: 30995,
    pidSpecs: [join(refDir, "pf-spool/pid/master.pid"), join(refDir, "dc-run/master.pid")],
    ingestMaildir: join(refDir, "mail/ingest/Maildir"),
    // Dovecot's auth_default_realm makes the bare name work, as the reference run used it.
    login: (user) => user,
    restart: async () => {
      execFileSync(join(refTools, "ref/down.sh"), { stdio: "ignore", env });
      up();
    },
    stop: async () => {
      execFileSync(join(refTools, "ref/down.sh"), { stdio: "ignore", env });
    },
    pid: () => null,
  };
}

/** The plain Node `smtp-server` peer that fsyncs into a Maildir (SMTP only). */
export async function nodePeerTarget(refTools: string): Promise<Target> {
  const refDir = process.env.REF_DIR ?? "/tmp/ref-a";
  const maildir = join(refDir, "node-mail/Maildir");
  const pidfile = join(refDir, "peers/node-smtp.pid");
  const up = () => execFileSync(join(refTools, "peers/node/up.sh"), ["30125", maildir], { stdio: "ignore" });
  const down = () => execFileSync(join(refTools, "peers/node/down.sh"), { stdio: "ignore" });
  up();
  return {
    label: "node-smtp-server",
    smtpPort: 30125,
    pop3Port: null,
    pop3sPort: null,
    pidSpecs: [pidfile],
    ingestMaildir: maildir,
    login: (user) => user,
    restart: async () => {
      down();
      up();
    },
    stop: async () => {
      down();
    },
    pid: () => {
      try {
        return Number(readFileSync(pidfile, "utf8").trim());
      } catch {
        return null;
      }
    },
  };
}
