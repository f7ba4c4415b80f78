// Each suite runs the same driver against every target in turn and keeps the raw rows.
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { rssKb, sampleRss } from "./proc.js";
import { parseTsv } from "./stats.js";
import { DOMAIN, PASSWORD, type Target } from "./targets.js";

export interface SuiteContext {
  readonly refTools: string;
  readonly outDir: string;
  readonly repeats: number;
  readonly quick: boolean;
  /** Seconds to wait after a `sync` before each SMTP ingest run (0: neither). */
  readonly settleSeconds: number;
  log(message: string): void;
}

const SMTP_COLS = ["label", "conns", "size", "sent", "accepted", "t_accept", "acc_rate", "delivered", "t_deliver", "del_rate", "cpu_s", "cpu_ms_per_msg", "note"];
const POP3_COLS = ["label", "tls", "clients", "msgs", "mb", "wall", "msg_rate", "mb_rate", "login_ms", "cpu_s", "cpu_ms_per_msg"];
const IDLE_COLS = ["label", "proto", "n", "greeted", "alive_after_hold", "failed", "not_greeted", "t_open", "rss_mb", "pss_mb", "rss_kb_per_conn", "pss_kb_per_conn", "procs_before", "procs_after", "cpu_s"];

function python(ctx: SuiteContext, script: string, args: string[]): void {
  const result = spawnSync("python3", [join(ctx.refTools, script), ...args], { stdio: ["ignore", "inherit", "inherit"], timeout: 30 * 60_000 });
  if (result.status !== 0) ctx.log(`${script} exited with ${result.status}`);
}

/**
 * Lets the disk go quiet before a run: a run of 1,500 messages of 100 KB leaves about 150 MB that the
 * kernel is still writing back when the next target's run starts, and whoever runs second paid for
 * it. Measured with the same build as both targets, in a fixed order: the first ran 1.11× the second
 * at 100 KB × 8 without this, 0.99× with it.
 */
function settle(ctx: SuiteContext): void {
  if (ctx.settleSeconds <= 0) return;
  spawnSync("sync", [], { stdio: "ignore", timeout: 120_000 });
  spawnSync("sleep", [String(ctx.settleSeconds)], { stdio: "ignore" });
}

const pidArgs = (t: Target) => t.pidSpecs.flatMap((p) => ["--pidfile", p]);

/** Messages in a mailbox, by POP3 STAT (for stores whose files are not on this disk). */
function popStat(target: Target, user: string): number {
  const code = `import poplib,sys\np=poplib.POP3("127.0.0.1",${target.pop3Port},timeout=60)\np.user(sys.argv[1]);p.pass_(sys.argv[2])\nprint(p.stat()[0]);p.quit()`;
  return Number(execFileSync("python3", ["-c", code, target.login(user), PASSWORD]).toString().trim());
}

function popEmpty(target: Target, user: string): void {
  const code = `import poplib,sys\np=poplib.POP3("127.0.0.1",${target.pop3Port},timeout=120)\np.user(sys.argv[1]);p.pass_(sys.argv[2])\nn=p.stat()[0]\nfor i in range(1,n+1): p.dele(i)\np.quit()`;
  execFileSync("python3", ["-c", code, target.login(user), PASSWORD]);
}

/**
 * Runs with more connections send more messages: 1,500 over 64 connections are 23 per connection, and
 * such a run ends within a second, mostly connection set-up and ramp-up (the same server ran 1.6×
 * faster at 4 KB × 64 in 8,000-message runs than in the suite's 1,500-message ones). At 8 connections
 * the base counts took a fast server half a second (600 messages of 100 KB at 1,200 a second), short
 * enough for one slow moment of the host to move a run's rate by a third.
 */
export function messagesFor(count: number, conns: number): number {
  if (conns >= 64) return count * 4;
  if (conns >= 8) return count * 3;
  return count;
}

/**
 * The targets take turns run by run (each size × connections × repeat runs on every target before the
 * next starts): this machine's speed drifts by up to 2× within minutes, and running all of one
 * target's runs before the next target's made the ratios measure the drift as much as the servers.
 */
export function smtpIngest(ctx: SuiteContext, targets: readonly Target[]): Record<string, string>[] {
  const out = join(ctx.outDir, "smtp_ingest.tsv");
  const sizes: Array<[size: number, count: number]> = ctx.quick ? [[4096, 300], [102400, 120]] : [[4096, 1500], [102400, 600]];
  const before = new Map(targets.map((t) => [t, t.ingestMaildir || !t.pop3Port ? 0 : popStat(t, "ingest")]));
  // The database server's CPU of each run, by label|conns|size in run order (the driver measures only
  // the server's own).
  const databaseMs = new Map<string, number[]>();
  for (const [size, count] of sizes) {
    for (const conns of [1, 8, 64]) {
      for (let repeat = 1; repeat <= ctx.repeats; repeat++) {
        for (const target of targets) {
          settle(ctx);
          ctx.log(`SMTP ingest: ${target.label}, ${size} octets, ${conns} connections, run ${repeat}`);
          const messages = messagesFor(count, conns);
          const databaseBefore = target.databaseCpuMs?.();
          python(ctx, "smtp_ingest.py", [
            "--label", target.label, "--port", String(target.smtpPort), "--rcpt", `ingest@${DOMAIN}`,
            ...(target.ingestMaildir ? ["--maildir", target.ingestMaildir] : []),
            ...pidArgs(target), "--sizes", String(size), "--counts", String(messages), "--conns", String(conns),
            "--repeats", "1", "--out", out,
          ]);
          if (databaseBefore !== undefined) {
            const key = `${target.label}|${conns}|${size}`;
            databaseMs.set(key, [...(databaseMs.get(key) ?? []), target.databaseCpuMs!() - databaseBefore]);
          }
        }
      }
    }
  }
  for (const target of targets) {
    if (target.ingestMaildir || !target.pop3Port) continue;
    // No Maildir to count: check over POP3 that everything acknowledged is in the mailbox.
    const rows = parseTsv(readFileSync(out, "utf8"), SMTP_COLS).filter((r) => r.label === target.label);
    const accepted = rows.reduce((sum, r) => sum + Number(r.accepted || 0), 0);
    const found = popStat(target, "ingest") - before.get(target)!;
    ctx.log(`${target.label}: ${accepted} accepted, ${found} found in the mailbox`);
    if (found !== accepted) ctx.log(`${target.label}: MISMATCH between accepted and delivered`);
    popEmpty(target, "ingest");
  }
  return parseTsv(readFileSync(out, "utf8"), SMTP_COLS).map((row) => {
    const ms = databaseMs.get(`${row.label}|${row.conns}|${row.size}`)?.shift();
    const accepted = Number(row.accepted);
    return ms === undefined || !(accepted > 0) ? row : { ...row, db_cpu_ms_per_msg: (ms / accepted).toFixed(3) };
  });
}

function fill(target: Target, user: string, count: number, size: number): void {
  popEmpty(target, user);
  const source = spawnSync("timeout", ["600", "smtp-source", "-s", "8", "-d", "-m", String(count), "-l", String(size),
    "-f", "fill@client.test", "-t", `${user}@${DOMAIN}`, "-M", "client.test", `127.0.0.1:${target.smtpPort}`], { stdio: "ignore" });
  if (source.status !== 0) throw new Error(`filling ${user} on ${target.label} failed`);
  const deadline = Date.now() + 180_000;
  while (popStat(target, user) < count) {
    if (Date.now() > deadline) throw new Error(`${user} on ${target.label}: mail did not arrive`);
    spawnSync("sleep", ["0.5"]);
  }
}

export function pop3Retrieve(ctx: SuiteContext, targets: readonly Target[]): Record<string, string>[] {
  const out = join(ctx.outDir, "pop3_retr.tsv");
  const small = ctx.quick ? 500 : 2000;
  const large = ctx.quick ? 100 : 300;
  for (const target of targets.filter((t) => t.pop3Port)) {
    ctx.log(`POP3: filling ${target.label}`);
    for (const user of ["pop1", "pop2", "pop3", "pop4"]) fill(target, user, small, 4096);
    for (const user of ["big1", "big2", "big3", "big4"]) fill(target, user, large, 102400);
  }
  for (const target of targets.filter((t) => t.pop3Port)) {
    const users = (names: string[]) => names.map((u) => target.login(u)).join(",");
    const common = ["--password", PASSWORD, "--clients", "1,4", "--repeats", String(ctx.repeats), ...pidArgs(target), "--out", out];
    ctx.log(`POP3: RETR ${target.label}`);
    python(ctx, "pop3_retr.py", ["--label", `${target.label}-4k`, "--port", String(target.pop3Port), "--users", users(["pop1", "pop2", "pop3", "pop4"]), "--passes", "5", ...common]);
    python(ctx, "pop3_retr.py", ["--label", `${target.label}-100k`, "--port", String(target.pop3Port), "--users", users(["big1", "big2", "big3", "big4"]), "--passes", "3", ...common]);
    if (target.pop3sPort) {
      python(ctx, "pop3_retr.py", ["--label", `${target.label}-100k-pop3s`, "--tls", "ssl", "--port", String(target.pop3sPort), "--users", users(["big1", "big2", "big3", "big4"]), "--passes", "3", ...common]);
    }
  }
  return parseTsv(readFileSync(out, "utf8"), POP3_COLS);
}

export async function idleConnections(ctx: SuiteContext, targets: readonly Target[], counts: readonly number[]): Promise<Record<string, string>[]> {
  const out = join(ctx.outDir, "idle.tsv");
  for (const target of targets) {
    const protos: Array<["smtp" | "pop3", number | null]> = [["smtp", target.smtpPort], ["pop3", target.pop3Port]];
    for (const [proto, port] of protos) {
      if (!port) continue;
      for (const n of counts) {
        // Postfix forks an smtpd per connection: 5,000 of them take minutes, so it gets the small counts only.
        if (target.label === "postfix+dovecot" && proto === "smtp" && n > 1000) continue;
        // The reference Dovecot is configured for at most 6,000 POP3 clients (REF_MAXCONN).
        if (target.label === "postfix+dovecot" && proto === "pop3" && n > 6000) continue;
        for (let i = 0; i < ctx.repeats; i++) {
          await target.restart();
          ctx.log(`idle: ${target.label} ${proto} ${n}`);
          python(ctx, "idle_conns.py", ["--label", target.label, "--port", String(port), "--proto", proto, "-n", String(n),
            "--repeats", "1", "--settle", "2", "--open-timeout", "180", ...pidArgs(target), "--out", out]);
        }
      }
    }
  }
  return parseTsv(readFileSync(out, "utf8"), IDLE_COLS);
}

// ---- the 50 MB message: in over SMTP, out over POP3, peak server memory each way ----

interface Dialogue {
  send(line: string): void;
  write(data: Buffer): boolean;
  reply(): Promise<string>;
  drain(): Promise<void>;
  close(): void;
  /** From now on hand every received byte to `fn` instead of splitting lines. */
  raw(fn: (chunk: Buffer) => void): void;
}

function dialogue(port: number): Promise<Dialogue> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => {
      let buffer = "";
      const lines: string[] = [];
      const waiters: Array<(line: string) => void> = [];
      let rawHandler: ((chunk: Buffer) => void) | null = null;
      socket.on("data", (chunk: Buffer) => {
        if (rawHandler) return rawHandler(chunk);
        buffer += chunk.toString("latin1");
        let at;
        while ((at = buffer.indexOf("\r\n")) >= 0) {
          lines.push(buffer.slice(0, at));
          buffer = buffer.slice(at + 2);
        }
        while (lines.length && waiters.length) waiters.shift()!(lines.shift()!);
      });
      resolve({
        send: (line) => void socket.write(`${line}\r\n`),
        write: (data) => socket.write(data),
        reply: () => new Promise((r) => (lines.length ? r(lines.shift()!) : waiters.push(r))),
        drain: () => new Promise((r) => socket.once("drain", () => r())),
        close: () => socket.destroy(),
        raw: (fn) => {
          rawHandler = fn;
          if (buffer) fn(Buffer.from(buffer, "latin1"));
        },
      });
    });
    socket.once("error", reject);
  });
}

export async function bigMessage(ctx: SuiteContext, target: Target, megabytes = 50): Promise<Record<string, number | string>> {
  const pid = target.pid();
  if (!pid || !target.pop3Port) throw new Error("big message needs a Mailroom target");
  popEmpty(target, "big1");
  const line = Buffer.from(`${"x".repeat(76)}\r\n`);
  const lines = Math.ceil((megabytes * 1024 * 1024) / line.length);

  const baselineIn = rssKb(pid);
  const inPeak = sampleRss(pid);
  const smtp = await dialogue(target.smtpPort);
  await smtp.reply();
  for (const command of ["EHLO bench.test", `MAIL FROM:<big@client.test>`, `RCPT TO:<big1@${DOMAIN}>`, "DATA"]) {
    smtp.send(command);
    let reply = await smtp.reply();
    while (/^\d{3}-/.test(reply)) reply = await smtp.reply();
  }
  const head = Buffer.from(`Subject: big\r\nFrom: big@client.test\r\n\r\n`);
  smtp.write(head);
  for (let i = 0; i < lines; i++) {
    if (!smtp.write(line)) await smtp.drain();
  }
  smtp.write(Buffer.from(".\r\n"));
  const accepted = await smtp.reply();
  smtp.send("QUIT");
  smtp.close();
  const peakIn = inPeak.stop();
  ctx.log(`big message in: ${accepted}`);
  if (!accepted.startsWith("250")) throw new Error(`${target.label}: the big message was refused: ${accepted}`);

  const pop = await dialogue(target.pop3Port);
  await pop.reply();
  pop.send(`USER ${target.login("big1")}`);
  await pop.reply();
  pop.send(`PASS ${PASSWORD}`);
  await pop.reply();
  // Measured from after the login: checking the password (scrypt) takes 32 MiB for a moment on a
  // thread-pool thread, which is the login's cost, not the message's.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const baselineOut = rssKb(pid);
  const outPeak = sampleRss(pid);
  pop.send("RETR 1");
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("RETR of the big message timed out")), 300_000);
    let tail = "";
    pop.raw((chunk) => {
      received += chunk.length;
      tail = (tail + chunk.toString("latin1")).slice(-5);
      if (received < 200 && chunk.toString("latin1").startsWith("-ERR")) reject(new Error(`RETR refused: ${chunk.toString("latin1").trim()}`));
      if (tail === "\r\n.\r\n") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  pop.send("QUIT");
  pop.close();
  const peakOut = outPeak.stop();
  return {
    label: target.label,
    megabytes,
    accepted: accepted.slice(0, 40),
    rss_before_in_mb: baselineIn / 1024,
    growth_in_mb: (peakIn - baselineIn) / 1024,
    rss_before_out_mb: baselineOut / 1024,
    growth_out_mb: (peakOut - baselineOut) / 1024,
    retrieved_mb: received / 1024 / 1024,
  };
}
