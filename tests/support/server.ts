// Starting real `mailroom serve` processes for the cross-package tests: config files, admin commands,
// waiting for the listeners, and stopping only what was started here.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const cli = join(root, "apps/server/bin/mailroom.js");
export const pgUrl = process.env.MAILROOM_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const redisUrl = process.env.MAILROOM_TEST_REDIS ?? "redis://127.0.0.1:6379";

export const runtimes: Record<string, string[]> = {
  node: [process.execPath],
  bun: [join(root, "node_modules/.bin/bun")],
  // The real binary, not the .bin wrapper: killing the wrapper would orphan the server.
  deno: [join(root, "node_modules/deno/deno"), "run", "-A"],
};

export type StoreKind = "fs" | "postgres" | "redis";

/** A self-signed certificate for localhost in `dir` (cert.pem, key.pem). */
export function makeCertificate(dir: string): { cert: string; key: string } {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  return { cert, key };
}

/** The [store] lines for a store kind; `tag` keeps runs apart (directory, schema, key prefix). */
export function storeLines(store: StoreKind, dir: string, tag: string): string[] {
  switch (store) {
    case "fs":
      return [`url = "maildir:${join(dir, tag, "mail")}"`];
    case "postgres":
      return [`url = "${pgUrl}"`, `schema = "mr_${tag}"`];
    case "redis":
      return [`url = "${redisUrl}"`, `prefix = "mrtest:${tag}:"`];
  }
}

export interface ConfigOptions {
  readonly dir: string;
  readonly name: string;
  readonly store: readonly string[];
  readonly tls: { cert: string; key: string };
  readonly extra?: readonly string[];
}

/** Writes a config with one SMTP (mx) and one POP3 listener on free loopback ports. */
export function writeConfig(options: ConfigOptions): string {
  const file = join(options.dir, `${options.name}.toml`);
  writeFileSync(
    file,
    [
      `hostname = "localhost"`,
      `[store]`,
      ...options.store,
      `[smtp]`,
      `listen = ["127.0.0.1:0"]`,
      `submission = []`,
      `submissions = []`,
      `[pop3]`,
      `listen = ["127.0.0.1:0"]`,
      `pop3s = []`,
      ...(options.extra ?? []),
      `[tls]`,
      `cert = "${options.tls.cert}"`,
      `key = "${options.tls.key}"`,
      `[log]`,
      `level = "info"`,
      ``,
    ].join("\n"),
  );
  return file;
}

/** Runs an admin command (`domain add …`, `user add … --password-stdin`) with Node. */
export function admin(config: string, args: string[], input = ""): void {
  execFileSync(process.execPath, [cli, ...args, "--config", config], {
    input,
    stdio: ["pipe", "ignore", "pipe"],
    timeout: 30_000,
  });
}

export interface Running {
  readonly child: ChildProcess;
  readonly ports: Record<string, number>;
  output(): string;
  /** SIGTERM, then the exit code (or "timeout"). */
  stop(): Promise<number | null | "timeout">;
}

const started = new Set<ChildProcess>();

/** Kills (SIGKILL) every server this module started that is still running. For afterAll. */
export function killAll(): void {
  for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  started.clear();
}

/** Starts `mailroom serve` and resolves once the SMTP and POP3 listeners reported their ports. */
export function serve(config: string, runtime = "node"): Promise<Running> {
  const [command, ...prefix] = runtimes[runtime]!;
  const child = spawn(command!, [...prefix, cli, "serve", "--config", config], { stdio: ["ignore", "pipe", "pipe"] });
  started.add(child);
  let out = "";
  const ports: Record<string, number> = {};
  const running: Running = {
    child,
    ports,
    output: () => out,
    stop: async () => {
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
      child.kill("SIGTERM");
      return Promise.race([exited, new Promise<"timeout">((done) => setTimeout(() => done("timeout"), 15_000))]);
    },
  };
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${runtime}: server not ready in time:\n${out}`)), 30_000);
    const scan = (chunk: Buffer): void => {
      out += chunk.toString();
      for (const line of out.split("\n")) {
        if (!line.includes("listening")) continue;
        try {
          const entry = JSON.parse(line) as { listener?: string; address?: string };
          if (entry.listener && entry.address) ports[entry.listener] = Number(entry.address.split(":").pop());
        } catch {
          // not a log line
        }
      }
      if (ports.smtp && ports.pop3) {
        clearTimeout(timer);
        resolvePromise(running);
      }
    };
    child.stdout!.on("data", scan);
    child.stderr!.on("data", scan);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${runtime}: server exited with ${code} before it was ready:\n${out}`));
    });
  });
}

/** Runs one named step; a failure says which. */
export async function step<T>(name: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw new Error(`step "${name}": ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Removes what a test left in the shared PostgreSQL / Redis (its schema or key prefix), so repeated
 * runs do not pile up data. Best effort through the servers' own CLIs: a failure here is not a test
 * failure.
 */
export function dropStoreData(store: StoreKind, tag: string): void {
  try {
    if (store === "postgres") {
      execFileSync("psql", [pgUrl, "-qc", `DROP SCHEMA IF EXISTS "mr_${tag}" CASCADE`], { stdio: "ignore", timeout: 30_000 });
    } else if (store === "redis") {
      const url = new URL(redisUrl);
      const where = ["-h", url.hostname, "-p", url.port || "6379"];
      const keys = execFileSync("redis-cli", [...where, "--scan", "--pattern", `mrtest:${tag}:*`], { timeout: 30_000 })
        .toString()
        .split("\n")
        .filter(Boolean);
      // One key per command: keys of different mailboxes may live in different cluster slots.
      for (const key of keys) execFileSync("redis-cli", [...where, "DEL", key], { stdio: "ignore", timeout: 10_000 });
    }
  } catch {
    // leave it: unique names keep later runs apart anyway
  }
}
