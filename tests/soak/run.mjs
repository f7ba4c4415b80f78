#!/usr/bin/env node
// Soak driver: starts `mailroom serve` on a fresh store, holds many concurrent SMTP sessions that keep
// delivering and many POP3 sessions (one mailbox each) that keep retrieving and deleting, for a fixed
// time, then sweeps every mailbox and checks that each message that got a 250 was retrieved exactly
// once. Samples the server's RSS. Exits 1 when a message is lost (or retrieved twice), 2 on bad usage.
import { execFileSync, spawn } from "node:child_process";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadConfig, openStore } from "@mailroom/server";
import { hashPassword } from "@mailroom/store";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const cli = join(root, "apps/server/bin/mailroom.js");

const { values: args } = parseArgs({
  options: {
    store: { type: "string", default: "fs" },
    duration: { type: "string", default: "180" },
    smtp: { type: "string", default: "500" },
    pop: { type: "string", default: "100" },
    "pause-ms": { type: "string", default: "500" },
    size: { type: "string", default: "4096" },
    json: { type: "string" },
    pg: { type: "string", default: process.env.MAILROOM_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres" },
    redis: { type: "string", default: process.env.MAILROOM_TEST_REDIS ?? "redis://127.0.0.1:6379" },
    help: { type: "boolean", default: false },
  },
});
if (args.help || !["fs", "postgres", "redis"].includes(args.store)) {
  console.log(`usage: node tests/soak/run.mjs [--store fs|postgres|redis] [--duration SECONDS] [--smtp SESSIONS]
       [--pop SESSIONS] [--pause-ms MS] [--size BYTES] [--json FILE]`);
  process.exit(args.help ? 0 : 2);
}
const durationMs = Number(args.duration) * 1000;
const smtpSessions = Number(args.smtp);
const popSessions = Number(args.pop);
const pauseMs = Number(args["pause-ms"]);
const bodySize = Number(args.size);
// Hard stop: the driver never runs longer than the duration plus this allowance for drain and sweep.
const HARD_STOP_EXTRA_MS = 120_000;
const PASSWORD = "soak-password";

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
const log = (...parts) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...parts);

function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** Minimal reply reader over a socket: resolves lines in order, rejects pending reads on close. */
class Wire {
  constructor(socket) {
    this.socket = socket;
    this.buffer = "";
    this.waiters = [];
    this.closed = false;
    socket.setEncoding("latin1");
    socket.on("data", (chunk) => {
      this.buffer += chunk;
      this.wake();
    });
    socket.on("close", () => {
      this.closed = true;
      this.wake();
    });
    socket.on("error", () => {});
  }
  static open(port) {
    return new Promise((done, fail) => {
      const socket = connect({ host: "127.0.0.1", port }, () => done(new Wire(socket)));
      socket.once("error", fail);
    });
  }
  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
  async until(take, timeoutMs = 60_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== undefined) return value;
      if (this.closed) throw Object.assign(new Error("connection closed"), { kind: "closed" });
      const left = deadline - Date.now();
      if (left <= 0) throw Object.assign(new Error("reply timeout"), { kind: "timeout" });
      await new Promise((done) => {
        const timer = setTimeout(done, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          done();
        });
      });
    }
  }
  line(timeoutMs) {
    return this.until(() => {
      const at = this.buffer.indexOf("\r\n");
      if (at < 0) return undefined;
      const text = this.buffer.slice(0, at);
      this.buffer = this.buffer.slice(at + 2);
      return text;
    }, timeoutMs);
  }
  async reply(timeoutMs) {
    let last = await this.line(timeoutMs);
    let text = last;
    while (/^\d{3}-/.test(last)) {
      last = await this.line(timeoutMs);
      text += `\n${last}`;
    }
    return text;
  }
  multiline() {
    return this.until(() => {
      if (this.buffer.startsWith(".\r\n")) {
        this.buffer = this.buffer.slice(3);
        return "";
      }
      const end = this.buffer.indexOf("\r\n.\r\n");
      if (end < 0) return undefined;
      const body = this.buffer.slice(0, end + 2);
      this.buffer = this.buffer.slice(end + 5);
      return body;
    });
  }
  async command(text, expect, timeoutMs = 60_000) {
    this.socket.write(`${text}\r\n`);
    const reply = await this.reply(timeoutMs).catch((error) => {
      error.kind = `${error.kind} at ${text.split(" ")[0]}`;
      throw error;
    });
    if (!expect.test(reply)) throw Object.assign(new Error(reply), { kind: `${text.split(" ")[0]} ${reply.slice(0, 3)}` });
    return reply;
  }
  close() {
    this.socket.destroy();
  }
}

// ------------------------------------------------------------------------------------------------
// Set-up

const tag = `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const dir = mkdtempSync(join(tmpdir(), "mailroom-soak-"));
const smtpPort = await freePort();
const popPort = await freePort();
const schema = `mr_soak_${tag}`;
const prefix = `mrsoak:${tag}:`;
const storeLines = {
  fs: [`url = "maildir:${join(dir, "mail")}"`],
  postgres: [`url = "${args.pg}"`, `schema = "${schema}"`],
  redis: [`url = "${args.redis}"`, `prefix = "${prefix}"`],
}[args.store];
const configFile = join(dir, "mailroom.toml");
writeFileSync(
  configFile,
  [
    `hostname = "localhost"`,
    `[store]`,
    ...storeLines,
    `[smtp]`,
    `listen = ["127.0.0.1:${smtpPort}"]`,
    `submission = []`,
    `submissions = []`,
    `[pop3]`,
    `listen = ["127.0.0.1:${popPort}"]`,
    `pop3s = []`,
    `[limits]`,
    `max_connections = ${smtpSessions + popSessions + 1000}`,
    `max_connections_per_address = ${smtpSessions + popSessions + 1000}`,
    `shutdown_timeout_seconds = 10`,
    `[log]`,
    // Per-session info lines for 600 busy sessions would make the soak mostly a logging benchmark.
    `level = "warn"`,
    ``,
  ].join("\n"),
);

const users = Array.from({ length: popSessions }, (_, i) => `u${String(i).padStart(4, "0")}@soak.test`);
try {
  const { store } = await openStore(loadConfig({ file: configFile }));
  await store.directory.addDomain("soak.test");
  const passwordHash = await hashPassword(PASSWORD);
  for (const address of users) await store.directory.addAccount({ address, passwordHash });
  await store.close();
} catch (error) {
  rmSync(dir, { recursive: true, force: true });
  throw error;
}
log(`store ${args.store}, ${users.length} users provisioned in ${dir}`);

const server = spawn(process.execPath, [cli, "serve", "--config", configFile], { stdio: ["ignore", "pipe", "pipe"] });
let serverOutput = "";
server.stdout.on("data", (chunk) => (serverOutput = (serverOutput + chunk).slice(-20_000)));
server.stderr.on("data", (chunk) => (serverOutput = (serverOutput + chunk).slice(-20_000)));
const serverExit = new Promise((done) => server.once("exit", (code, signal) => done(code ?? signal)));

let cleanedUp = false;
function cleanup(keepData = false) {
  if (cleanedUp) return;
  cleanedUp = true;
  try {
    if (server.exitCode === null && server.signalCode === null) process.kill(server.pid, "SIGKILL");
  } catch {}
  if (keepData) {
    log(`keeping the store data for inspection: ${dir} (schema ${schema} / prefix ${prefix})`);
    return;
  }
  try {
    if (args.store === "postgres") execFileSync("psql", [args.pg, "-q", "-c", `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { stdio: "ignore" });
    if (args.store === "redis") {
      const keys = execFileSync("redis-cli", ["-u", args.redis, "--scan", "--pattern", `${prefix}*`], { encoding: "utf8", maxBuffer: 1 << 30 }).split("\n").filter(Boolean);
      for (let i = 0; i < keys.length; i += 1000) execFileSync("redis-cli", ["-u", args.redis, "DEL", ...keys.slice(i, i + 1000)], { stdio: "ignore" });
    }
  } catch (error) {
    log(`cleanup of store data failed: ${error.message}`);
  }
  rmSync(dir, { recursive: true, force: true });
}
process.once("SIGINT", () => {
  cleanup();
  process.exit(130);
});
const hardStop = setTimeout(() => {
  log("hard stop reached");
  cleanup();
  process.exit(1);
}, durationMs + HARD_STOP_EXTRA_MS);
hardStop.unref();

for (let ready = false, tries = 0; !ready; tries++) {
  if (tries > 300 || server.exitCode !== null) {
    log(`server did not come up:\n${serverOutput}`);
    cleanup();
    process.exit(1);
  }
  ready = await Wire.open(popPort).then(
    (wire) => (wire.close(), true),
    () => false,
  );
  if (!ready) await sleep(100);
}

// ------------------------------------------------------------------------------------------------
// Load

const errors = new Map();
const errorSamples = new Map();
const countError = (kind, sample) => {
  errors.set(kind, (errors.get(kind) ?? 0) + 1);
  if (sample && !errorSamples.has(kind)) errorSamples.set(kind, `${Math.round((Date.now() - startedAt) / 1000)}s: ${sample.slice(0, 200)}`);
};
const accepted = new Set();
const retrieved = new Set();
const duplicates = [];
// Retrieved and DELE'd, but the QUIT reply never came: the server may or may not have deleted them.
const ambiguous = new Set();
const latency = { endOfData: [], quit: [], firstAcceptMs: null };
const active = { smtp: 0, pop: 0 };
const peakActive = { smtp: 0, pop: 0 };
let running = true;
const startedAt = Date.now();

function padding(id) {
  const line = `${id} ${"abcdefghijklmnopqrstuvwxyz0123456789".repeat(2)}\r\n`;
  return line.repeat(Math.max(1, Math.ceil(bodySize / line.length)));
}

async function smtpWorker(worker) {
  let sequence = 0;
  while (running) {
    let wire;
    try {
      wire = await Wire.open(smtpPort);
    } catch (error) {
      countError(`smtp connect ${error.code ?? error.message}`);
      await sleep(500);
      continue;
    }
    active.smtp++;
    peakActive.smtp = Math.max(peakActive.smtp, active.smtp);
    try {
      const greeting = await wire.reply();
      if (!greeting.startsWith("220")) throw Object.assign(new Error(greeting), { kind: `greeting ${greeting.slice(0, 3)}` });
      await wire.command("EHLO soak.client", /^250/);
      while (running) {
        const id = `s${worker}-${sequence++}-${tag}`;
        const to = users[(worker + sequence) % users.length];
        await wire.command("MAIL FROM:<load@soak.client>", /^250/);
        await wire.command(`RCPT TO:<${to}>`, /^250/);
        await wire.command("DATA", /^354/);
        wire.socket.write(`Message-ID: <${id}@soak>\r\nSubject: soak ${id}\r\nTo: ${to}\r\n\r\n${padding(id)}.\r\n`);
        const sentAt = Date.now();
        const done = await wire.reply(300_000);
        latency.endOfData.push(Date.now() - sentAt);
        latency.firstAcceptMs ??= Date.now() - startedAt;
        if (done.startsWith("250")) accepted.add(id);
        else countError(`smtp end-of-data ${done.slice(0, 9)}`);
        await sleep(Math.random() * pauseMs * 2);
      }
      await wire.command("QUIT", /^221/);
    } catch (error) {
      countError(`smtp ${error.kind ?? error.message}`, error.message);
      await sleep(200);
    } finally {
      active.smtp--;
      wire.close();
    }
  }
}

/**
 * A string that shares no memory with the one it came from. A regular-expression match is a slice of
 * the message it was found in, and V8 keeps the whole message alive for as long as the slice lives:
 * kept in `retrieved`, every id held its 4 KB message, and a 17-minute run filled the driver's 4 GB heap.
 */
const ownCopy = (text) => Buffer.from(text, "latin1").toString("latin1");

/** One POP3 visit: retrieve and delete everything; ids count as retrieved only once QUIT said +OK. */
async function popVisit(address) {
  const wire = await Wire.open(popPort);
  active.pop++;
  peakActive.pop = Math.max(peakActive.pop, active.pop);
  try {
    await wire.reply();
    await wire.command(`USER ${address}`, /^\+OK/);
    await wire.command(`PASS ${PASSWORD}`, /^\+OK/);
    const stat = await wire.command("STAT", /^\+OK/);
    const count = Number(stat.split(" ")[1]);
    const seen = [];
    for (let n = 1; n <= count; n++) {
      await wire.command(`RETR ${n}`, /^\+OK/);
      const body = await wire.multiline();
      seen.push(ownCopy(/^Message-ID: <([^@>]+)@/im.exec(body)?.[1] ?? `unparsed-${address}-${n}`));
      await wire.command(`DELE ${n}`, /^\+OK/);
    }
    const quitAt = Date.now();
    try {
      await wire.command("QUIT", /^\+OK/, 300_000);
    } catch (error) {
      for (const id of seen) ambiguous.add(id);
      throw error;
    }
    latency.quit.push(Date.now() - quitAt);
    for (const id of seen) {
      if (retrieved.has(id)) duplicates.push(id);
      retrieved.add(id);
    }
    return count;
  } finally {
    active.pop--;
    wire.close();
  }
}

async function popWorker(index) {
  const address = users[index];
  while (running) {
    try {
      await popVisit(address);
    } catch (error) {
      countError(`pop3 ${error.kind ?? error.code ?? error.message}`, error.message);
    }
    await sleep(Math.random() * pauseMs * 2);
  }
}

const memory = [];
function sampleRss() {
  try {
    const status = readFileSync(`/proc/${server.pid}/status`, "utf8");
    const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    memory.push({ t: Math.round((Date.now() - startedAt) / 1000), mb: Math.round(kb / 102.4) / 10 });
  } catch {
    // process gone; the exit check reports it
  }
}
sampleRss();
const sampler = setInterval(() => {
  sampleRss();
  const last = memory.at(-1);
  log(`t=${last?.t}s smtp=${active.smtp} pop3=${active.pop} accepted=${accepted.size} retrieved=${retrieved.size} rss=${last?.mb}MB errors=${[...errors.values()].reduce((a, b) => a + b, 0)}`);
}, 5000);

log(`starting ${smtpSessions} SMTP and ${popSessions} POP3 sessions for ${durationMs / 1000}s`);
const workers = [
  ...Array.from({ length: smtpSessions }, (_, i) => smtpWorker(i)),
  ...Array.from({ length: popSessions }, (_, i) => popWorker(i)),
];
await sleep(durationMs);
running = false;
log("duration over: letting open transactions finish");
await Promise.race([Promise.all(workers), sleep(60_000)]);
clearInterval(sampler);
sampleRss();

// ------------------------------------------------------------------------------------------------
// Sweep and verdict

log("sweeping every mailbox");
for (let i = 0; i < users.length; i += 20) {
  await Promise.all(
    users.slice(i, i + 20).map((address) =>
      popVisit(address).catch((error) => countError(`sweep ${error.kind ?? error.message}`)),
    ),
  );
}
sampleRss();

server.kill("SIGTERM");
const exitCode = await Promise.race([serverExit, sleep(30_000).then(() => "timeout")]);

const lost = [...accepted].filter((id) => !retrieved.has(id) && !ambiguous.has(id));
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] : null;
};
const unexpected = [...retrieved].filter((id) => !accepted.has(id));
const rss = memory.map((m) => m.mb);
const summary = {
  date: new Date().toISOString(),
  store: args.store,
  durationSeconds: durationMs / 1000,
  sessions: { smtpTarget: smtpSessions, popTarget: popSessions, smtpPeak: peakActive.smtp, popPeak: peakActive.pop },
  messageBytes: bodySize,
  accepted: accepted.size,
  delivered: retrieved.size,
  retrieved: retrieved.size,
  lost: lost.length,
  duplicates: duplicates.length,
  // Retrieved but no 250 seen: the reply was lost when the run stopped; not a loss.
  retrievedWithout250: unexpected.length,
  ambiguousQuit: [...ambiguous].filter((id) => !retrieved.has(id)).length,
  latencyMs: {
    firstAccept: latency.firstAcceptMs,
    endOfDataP50: percentile(latency.endOfData, 50),
    endOfDataP99: percentile(latency.endOfData, 99),
    endOfDataMax: percentile(latency.endOfData, 100),
    quitP99: percentile(latency.quit, 99),
    quitMax: percentile(latency.quit, 100),
  },
  acceptedPerSecond: Math.round((accepted.size / (durationMs / 1000)) * 10) / 10,
  errors: Object.fromEntries(errors),
  errorSamples: Object.fromEntries(errorSamples),
  memoryMB: { start: rss[0], peak: Math.max(...rss), end: rss.at(-1) },
  serverExit: exitCode,
};
console.log(JSON.stringify(summary, null, 2));
if (args.json) writeFileSync(args.json, `${JSON.stringify({ ...summary, memorySamples: memory }, null, 2)}\n`);
if (lost.length > 0) log(`LOST ${lost.length} message(s), e.g. ${lost.slice(0, 5).join(", ")}`);
if (duplicates.length > 0) log(`RETRIEVED TWICE ${duplicates.length}, e.g. ${duplicates.slice(0, 5).join(", ")}`);
if (exitCode !== 0) log(`server exit ${exitCode}:\n${serverOutput.slice(-3000)}`);
cleanup(lost.length > 0 && process.env.SOAK_KEEP === "1");
process.exit(lost.length > 0 || duplicates.length > 0 ? 1 : 0);
