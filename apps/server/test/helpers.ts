import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import { ConfigError } from "../src/index.js";

export const BIN = resolve(fileURLToPath(new URL("../bin/mailroom.js", import.meta.url)));

const temps: string[] = [];
const children = new Set<ChildProcess>();

export function tempDir(prefix = "mailroom-server-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

/** Kills every process a test started (by pid) and removes the temp dirs. Call from afterAll. */
export function cleanup(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
  children.clear();
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
}

/** The environment for a child: ours without MAILROOM_* (a developer's own settings must not leak in). */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("MAILROOM_")) env[k] = v;
  return { ...env, ...extra };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: readonly string[], options: { stdin?: string; cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: options.cwd ?? tmpdir(),
      env: cleanEnv(options.env),
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolvePromise({ code, stdout, stderr });
    });
    child.stdin.end(options.stdin ?? "");
  });
}

export interface Served {
  child: ChildProcess;
  /** listener name → "host:port" */
  addresses: Record<string, string>;
  port(name: string): number;
  /** Every JSON log line so far. */
  lines: Array<Record<string, unknown>>;
  stderr(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** Waits until a log line satisfies the predicate. */
  waitForLine(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/** Starts `mailroom serve --config FILE` and waits for the "mailroom ready" line. */
export async function serve(configFile: string, options: { cwd?: string; env?: Record<string, string> } = {}): Promise<Served> {
  const child = spawn(process.execPath, [BIN, "serve", "--config", configFile], {
    cwd: options.cwd ?? tmpdir(),
    env: cleanEnv(options.env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const lines: Array<Record<string, unknown>> = [];
  let stderr = "";
  let buffered = "";
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding("utf8").on("data", (data: string) => {
    buffered += data;
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const text = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      try {
        lines.push(JSON.parse(text) as Record<string, unknown>);
      } catch {
        lines.push({ raw: text });
      }
    }
    for (const waiter of waiters) waiter();
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolvePromise) =>
    child.on("exit", (code) => {
      children.delete(child);
      for (const waiter of waiters) waiter();
      resolvePromise(code);
    }),
  );

  const waitForLine = (predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((resolvePromise, reject) => {
      const check = (): void => {
        const found = lines.find(predicate);
        if (found) {
          done();
          resolvePromise(found);
        } else if (child.exitCode !== null) {
          done();
          reject(new Error(`server exited (${child.exitCode}) first; stderr: ${stderr}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no such log line within ${timeoutMs} ms; stderr: ${stderr}; lines: ${JSON.stringify(lines)}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  const ready = await waitForLine((line) => line["msg"] === "mailroom ready");
  const addresses: Record<string, string> = {};
  for (const entry of ready["listeners"] as Array<{ listener: string; address: string }>) addresses[entry.listener] = entry.address;
  return {
    child,
    addresses,
    port: (name) => Number(addresses[name]!.split(":").pop()),
    lines,
    stderr: () => stderr,
    exited,
    waitForLine,
  };
}

/** A self-signed certificate for localhost made with the openssl CLI (independent of the server's own generator). */
export function opensslCertificate(dir: string, name = "server"): { cert: string; key: string } {
  const cert = join(dir, `${name}-cert.pem`);
  const key = join(dir, `${name}-key.pem`);
  const result = spawnSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
      "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ],
    { encoding: "utf8" },
  );
  if (result.status !== 0) throw new Error(`openssl failed: ${result.stderr}`);
  return { cert, key };
}

export function writeFile(dir: string, name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Runs a Python 3 script with arguments; resolves with stdout (throws on a non-zero exit). */
export function python(script: string, args: readonly string[], stdin = ""): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn("python3", ["-c", script, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    children.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolvePromise(stdout);
      else reject(new Error(`python exited ${code}: ${stderr}`));
    });
    child.stdin.end(stdin);
  });
}

/** Runs `action`, expects a ConfigError, and returns its message. */
export function errorOf(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error("expected a ConfigError");
}
