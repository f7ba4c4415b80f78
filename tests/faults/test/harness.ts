// Shared pieces for the fault tests: a raw line client, config files, starting and killing the real
// `mailroom serve` process, and looking into each store's own data for things a client must not see.
// Everything a test starts is recorded here and killed by pid in `cleanup()`.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect as netConnect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const cli = join(root, "apps/server/bin/mailroom.js");
export const sharedPg = process.env.MAILROOM_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const sharedRedis = process.env.MAILROOM_TEST_REDIS ?? "redis://127.0.0.1:6379";
export const stores = ["fs", "postgres", "redis"] as const;
export type StoreKind = (typeof stores)[number];
export const PASSWORD = "fault-test-pw";

// ---------------------------------------------------------------------------------------------
// Process and temp-dir bookkeeping

const children = new Set<ChildProcess>();
const dirs: string[] = [];
const extraCleanups: Array<() => void> = [];

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

export function onCleanup(run: () => void): void {
  extraCleanups.push(run);
}

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `mailroom-faults-${prefix}-`));
  dirs.push(dir);
  return dir;
}

/** Kills every process this file started (by pid), then runs extra cleanups, then removes temp dirs. */
export function cleanup(): void {
  for (const child of children) {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }
  for (const run of extraCleanups.splice(0).reverse()) {
    try {
      run();
    } catch {
      // best effort: the next cleanup step must still run
    }
  }
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export function uniqueTag(): string {
  return `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
}

export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => done(port));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

// ---------------------------------------------------------------------------------------------
// Raw line client

export class LineClient {
  #buffer = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  closed = false;

  constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.#wake();
    });
    socket.on("error", () => {});
  }

  static open(port: number): Promise<LineClient> {
    return new Promise((done, fail) => {
      const socket = netConnect({ host: "127.0.0.1", port }, () => done(new LineClient(socket)));
      socket.once("error", fail);
    });
  }

  #wake(): void {
    for (const waiter of this.#waiters.splice(0)) waiter();
  }

  async #until<T>(take: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== undefined) return value;
      if (this.closed) throw new Error(`connection closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((done) => {
        const timer = setTimeout(done, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          done();
        });
      });
    }
  }

  line(what = "a reply line", timeoutMs = 15_000): Promise<string> {
    return this.#until(
      () => {
        const at = this.#buffer.indexOf("\r\n");
        if (at < 0) return undefined;
        const text = this.#buffer.subarray(0, at).toString("latin1");
        this.#buffer = this.#buffer.subarray(at + 2);
        return text;
      },
      what,
      timeoutMs,
    );
  }

  /** A POP3 multi-line body up to the lone ".", dot-stuffing undone, as latin1 so bytes round-trip. */
  multiline(what: string): Promise<string> {
    return this.#until(
      () => {
        if (this.#buffer.subarray(0, 3).equals(Buffer.from(".\r\n"))) {
          this.#buffer = this.#buffer.subarray(3);
          return "";
        }
        const end = this.#buffer.indexOf("\r\n.\r\n");
        if (end < 0) return undefined;
        const body = this.#buffer.subarray(0, end + 2).toString("latin1");
        this.#buffer = this.#buffer.subarray(end + 5);
        return body.replace(/^\.\./gm, ".");
      },
      what,
      15_000,
    );
  }

  send(text: string): void {
    this.socket.write(`${text}\r\n`);
  }

  /** One reply; SMTP continuation lines are joined with "\n". */
  async reply(step: string, timeoutMs = 15_000): Promise<string> {
    let last = await this.line(step, timeoutMs);
    let text = last;
    while (/^\d{3}-/.test(last)) {
      last = await this.line(step, timeoutMs);
      text += `\n${last}`;
    }
    return text;
  }

  async expect(command: string, pattern: RegExp, step = command): Promise<string> {
    this.send(command);
    const text = await this.reply(step);
    if (!pattern.test(text)) throw new Error(`${step}: unexpected reply ${JSON.stringify(text)}`);
    return text;
  }

  close(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Stores: config section and a look at the raw data

export interface StoreSetup {
  readonly kind: StoreKind;
  /** Lines for the [store] section. */
  readonly section: string;
  /** Where `marker` can be found in data a reader could see (committed files, rows, keys). */
  visibleCopies(marker: string): string[];
  /** Deliveries in progress holding the marker (Maildir tmp/, Redis staging lists); null where not observable. */
  inFlightCopies?(marker: string): number | null;
}

export function storeSetup(kind: StoreKind, dir: string, tag: string, urls: { pg?: string; redis?: string } = {}): StoreSetup {
  switch (kind) {
    case "fs": {
      const mail = join(dir, "mail");
      return {
        kind,
        section: `url = "maildir:${mail}"`,
        visibleCopies: (marker) => fsCopies(mail, marker),
        inFlightCopies: (marker) => fsCopies(mail, marker, true).length,
      };
    }
    case "postgres": {
      const url = urls.pg ?? sharedPg;
      const schema = `mr_fault_${tag}`;
      return {
        kind,
        section: `url = "${url}"\nschema = "${schema}"`,
        visibleCopies: (marker) => pgCopies(url, schema, marker),
        inFlightCopies: (marker) => pgCopies(url, schema, marker, true).length,
      };
    }
    case "redis": {
      const url = urls.redis ?? sharedRedis;
      const prefix = `mrtest:fault:${tag}:`;
      onCleanup(() => dropRedisPrefix(url, prefix));
      return {
        kind,
        section: `url = "${url}"\nprefix = "${prefix}"`,
        visibleCopies: (marker) => redisCopies(url, prefix, marker),
        inFlightCopies: (marker) => redisCopies(url, prefix, marker, true).length,
      };
    }
  }
}

/** Files outside tmp/ (where Maildir keeps deliveries in progress, invisible to readers) holding the marker. */
function fsCopies(dir: string, marker: string, inTmp = false): string[] {
  const found: string[] = [];
  const walk = (path: string): void => {
    if (!existsSync(path)) return;
    for (const name of readdirSync(path)) {
      const full = join(path, name);
      const info = statSync(full);
      if (info.isDirectory()) {
        if (name !== "tmp" || inTmp) walk(full);
      } else if ((!inTmp || full.includes("/tmp/")) && readFileSync(full).includes(marker)) {
        found.push(full);
      }
    }
  };
  walk(dir);
  return found;
}

function psql(url: string, sql: string): string {
  return execFileSync("psql", [url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 20_000,
  }).trim();
}

/**
 * Rows in the schema's body chunks holding the marker: of published bodies (what a reader could ever
 * see), or with `staged` of bodies still being written (no message or queue row refers to those).
 */
function pgCopies(url: string, schema: string, marker: string, staged = false): string[] {
  const count = psql(
    url,
    `SELECT count(*) FROM "${schema}".body_chunks c JOIN "${schema}".bodies b ON b.id = c.body_id
     WHERE b.staged_at IS ${staged ? "NOT NULL" : "NULL"} AND position(convert_to('${marker}', 'UTF8') in c.data) > 0`,
  );
  return Number(count) > 0 ? [`${count} row(s) in ${schema}.body_chunks`] : [];
}

function redisCli(url: string, args: string[]): string {
  return execFileSync("redis-cli", ["-u", url, "--raw", ...args], {
    encoding: "latin1",
    stdio: ["ignore", "pipe", "pipe"],
    timeout: 20_000,
    maxBuffer: 256 << 20,
  });
}

/**
 * Keys holding the marker. A staging list of an append in progress is not visible to readers and
 * carries an expiry, so it only counts when it would live forever.
 */
function redisCopies(url: string, prefix: string, marker: string, staging = false): string[] {
  const found: string[] = [];
  const keys = redisCli(url, ["--scan", "--pattern", `${prefix}*`]).split("\n").filter(Boolean);
  for (const key of keys) {
    const type = redisCli(url, ["TYPE", key]).trim();
    let content = "";
    if (type === "list") content = redisCli(url, ["LRANGE", key, "0", "-1"]);
    else if (type === "string") content = redisCli(url, ["GET", key]);
    else if (type === "hash") content = redisCli(url, ["HGETALL", key]);
    if (!content.includes(marker)) continue;
    const ttl = Number(redisCli(url, ["PTTL", key]).trim());
    const staged = key.includes(":stage:") && ttl > 0;
    if (staged !== staging) continue;
    found.push(`${key} (ttl ${ttl})`);
  }
  return found;
}

function dropRedisPrefix(url: string, prefix: string): void {
  const keys = redisCli(url, ["--scan", "--pattern", `${prefix}*`]).split("\n").filter(Boolean);
  for (let i = 0; i < keys.length; i += 500) redisCli(url, ["DEL", ...keys.slice(i, i + 500)]);
}

export function dropPgSchema(url: string, schema: string): void {
  psql(url, `DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
}

// ---------------------------------------------------------------------------------------------
// Config, admin commands, the server process

export interface ConfigExtras {
  readonly shutdownTimeoutSeconds?: number;
  readonly leaseTtlSeconds?: number;
  /** Turns on a plaintext submission listener (AUTH allowed on loopback) and sends all relay there. */
  readonly smarthostPort?: number;
}

export function writeConfig(dir: string, store: StoreSetup, extras: ConfigExtras = {}): string {
  const file = join(dir, "mailroom.toml");
  writeFileSync(
    file,
    [
      `hostname = "localhost"`,
      `[store]`,
      store.section,
      `[smtp]`,
      `listen = ["127.0.0.1:0"]`,
      extras.smarthostPort === undefined ? `submission = []` : `submission = ["127.0.0.1:0"]`,
      `submissions = []`,
      `allow_loopback_plaintext_auth = true`,
      `[pop3]`,
      `listen = ["127.0.0.1:0"]`,
      `pop3s = []`,
      `lease_ttl_seconds = ${extras.leaseTtlSeconds ?? 60}`,
      `[limits]`,
      `shutdown_timeout_seconds = ${extras.shutdownTimeoutSeconds ?? 10}`,
      `[log]`,
      `level = "info"`,
      ...(extras.smarthostPort === undefined
        ? []
        : [`[outbound]`, `smarthost = "127.0.0.1:${extras.smarthostPort}"`, `smarthost_tls = "none"`, `retry_schedule_minutes = [1]`]),
      ``,
    ].join("\n"),
  );
  if (store.kind === "postgres") {
    const schema = /schema = "([^"]+)"/.exec(store.section)?.[1];
    const url = /url = "([^"]+)"/.exec(store.section)?.[1];
    if (schema && url) onCleanup(() => dropPgSchema(url, schema));
  }
  return file;
}

export function admin(config: string, args: string[], input = ""): string {
  return execFileSync(process.execPath, [cli, ...args, "--config", config], {
    input,
    encoding: "utf8",
    stdio: ["pipe", "pipe", "pipe"],
    timeout: 30_000,
  });
}

/** Domain example.test and the given local parts as users, all with PASSWORD. */
export function addUsers(config: string, localParts: readonly string[]): string[] {
  admin(config, ["domain", "add", "example.test"]);
  return localParts.map((local) => {
    const address = `${local}@example.test`;
    admin(config, ["user", "add", address, "--password-stdin"], `${PASSWORD}\n`);
    return address;
  });
}

export interface Running {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly smtp: number;
  readonly pop3: number;
  /** Every listener's port by name (smtp, submission, pop3, …). */
  readonly ports: Readonly<Record<string, number>>;
  output(): string;
  /** Resolves with the exit code (or the signal name) once the process is gone. */
  readonly exited: Promise<number | string>;
}

export function serve(config: string): Promise<Running> {
  const child = track(spawn(process.execPath, [cli, "serve", "--config", config], { stdio: ["ignore", "pipe", "pipe"] }));
  let out = "";
  const ports: Record<string, number> = {};
  const exited = new Promise<number | string>((done) => child.once("exit", (code, signal) => done(code ?? signal ?? "unknown")));
  return new Promise((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`server not ready in time:\n${out}`)), 30_000);
    const scan = (chunk: Buffer): void => {
      out += chunk.toString();
      for (const line of chunk.toString().split("\n")) {
        if (!line.includes('"listening"')) continue;
        try {
          const entry = JSON.parse(line) as { listener?: string; address?: string };
          if (entry.listener && entry.address) ports[entry.listener] = Number(entry.address.split(":").pop());
        } catch {
          // a partial line; the ready check below tolerates it
        }
      }
      if (ports.smtp && ports.pop3 && out.includes("mailroom ready")) {
        clearTimeout(timer);
        done({ child, pid: child.pid!, smtp: ports.smtp, pop3: ports.pop3, ports, output: () => out, exited });
      }
    };
    child.stdout!.on("data", scan);
    child.stderr!.on("data", scan);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code} before it was ready:\n${out}`));
    });
  });
}

export async function killHard(server: Running): Promise<void> {
  try {
    process.kill(server.pid, "SIGKILL");
  } catch {
    // already gone
  }
  await server.exited;
}

// ---------------------------------------------------------------------------------------------
// Protocol helpers

export function message(id: string, to: string, padding = 0): string {
  const lines = [`Message-ID: <${id}@faults.test>`, `Subject: fault ${id}`, `From: sender@client.test`, `To: ${to}`, ``, `body of ${id}`];
  for (let i = 0; i * 76 < padding; i++) lines.push(`${id}:${"x".repeat(60)}:${i}`);
  return `${lines.join("\r\n")}\r\n`;
}

export function dotStuff(body: string): string {
  return body.replace(/^\./gm, "..");
}

export async function smtpOpen(port: number): Promise<LineClient> {
  const client = await LineClient.open(port);
  const greeting = await client.reply("greeting");
  if (!greeting.startsWith("220")) throw new Error(`greeting: ${greeting}`);
  await client.expect("EHLO client.test", /^250/);
  return client;
}

/** One transaction on an open session; returns the final reply (250 or an error). */
export async function smtpSend(client: LineClient, to: string, body: string): Promise<string> {
  await client.expect("MAIL FROM:<sender@client.test>", /^250/);
  const rcpt = await client.expect(`RCPT TO:<${to}>`, /^\d{3}/);
  if (!rcpt.startsWith("250")) {
    await client.expect("RSET", /^250/);
    return rcpt;
  }
  await client.expect("DATA", /^354/);
  client.socket.write(`${dotStuff(body)}.\r\n`);
  return client.reply("end of data");
}

export async function deliver(port: number, to: string, bodies: readonly string[]): Promise<void> {
  const client = await smtpOpen(port);
  for (const body of bodies) {
    const reply = await smtpSend(client, to, body);
    if (!reply.startsWith("250")) throw new Error(`delivery refused: ${reply}`);
  }
  await client.expect("QUIT", /^221/);
  client.close();
}

export async function popLogin(port: number, user: string): Promise<LineClient> {
  const client = await LineClient.open(port);
  await client.reply("greeting");
  await client.expect(`USER ${user}`, /^\+OK/);
  await client.expect(`PASS ${PASSWORD}`, /^\+OK/, `PASS for ${user}`);
  return client;
}

/** msg number -> uid */
export async function uidl(client: LineClient): Promise<Map<number, string>> {
  await client.expect("UIDL", /^\+OK/);
  const listing = await client.multiline("UIDL listing");
  const map = new Map<number, string>();
  for (const line of listing.split("\r\n").filter(Boolean)) {
    const [number, uid] = line.split(" ");
    map.set(Number(number), uid!);
  }
  return map;
}

export async function retr(client: LineClient, number: number): Promise<string> {
  await client.expect(`RETR ${number}`, /^\+OK/);
  return client.multiline(`RETR ${number}`);
}

/** uid -> Message-ID id part, for every message in the mailbox (headers via TOP n 0). */
export async function messageIds(client: LineClient): Promise<Map<string, string>> {
  const uids = await uidl(client);
  const ids = new Map<string, string>();
  for (const [number, uid] of uids) {
    await client.expect(`TOP ${number} 0`, /^\+OK/);
    const head = await client.multiline(`TOP ${number}`);
    ids.set(uid, /^Message-ID: <([^@>]+)@/im.exec(head)?.[1] ?? "?");
  }
  return ids;
}

/** Logs in, reads what it needs and QUITs, so that the mailbox is left as it was. */
export async function peek<T>(port: number, user: string, read: (client: LineClient) => Promise<T>): Promise<T> {
  const client = await popLogin(port, user);
  try {
    return await read(client);
  } finally {
    client.send("QUIT");
    await client.line("QUIT").catch(() => "");
    client.close();
  }
}
