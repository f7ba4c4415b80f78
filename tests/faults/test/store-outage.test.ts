// Fault 4: the store goes away under a running server and comes back. A private Redis and a private
// PostgreSQL cluster are started for this (never the shared services). While the store is down SMTP
// answers RCPT/DATA with a 4xx and POP3 login with [SYS/TEMP]; once it is back the same server process
// delivers and retrieves again without a restart.
import { execFileSync, spawn } from "node:child_process";
import { chownSync, existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, deliver, freePort, LineClient, message, messageIds, onCleanup, peek, serve, sleep, smtpOpen,
  storeSetup, tempDir, track, uniqueTag, writeConfig, PASSWORD, type StoreKind,
} from "./harness.js";

afterAll(cleanup);

interface PrivateStore {
  readonly url: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

function succeeds(run: () => unknown): boolean {
  try {
    run();
    return true;
  } catch {
    return false;
  }
}

async function privateRedis(dir: string): Promise<PrivateStore> {
  const port = await freePort();
  let pid: number | undefined;
  const ping = (): boolean => succeeds(() => execFileSync("redis-cli", ["-p", String(port), "PING"], { stdio: "pipe", timeout: 2_000 }));
  const store: PrivateStore = {
    url: `redis://127.0.0.1:${port}`,
    async start() {
      const child = track(
        spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", dir], {
          stdio: "ignore",
        }),
      );
      pid = child.pid;
      await waitFor(ping, "private redis up");
    },
    async stop() {
      // SIGKILL: the harshest way a store can disappear; appendfsync always keeps what was acknowledged.
      if (pid !== undefined) process.kill(pid, "SIGKILL");
      await waitFor(() => !ping(), "private redis down");
    },
  };
  return store;
}

const pgBin = (): string | null => {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) return null;
  const version = readdirSync(base).sort().pop();
  return version ? join(base, version, "bin") : null;
};

async function privatePostgres(dir: string): Promise<PrivateStore> {
  const bin = pgBin();
  if (!bin) throw new Error("no /usr/lib/postgresql/*/bin");
  const port = await freePort();
  const data = join(dir, "pgdata");
  chownSync(dir, uidOf("postgres"), gidOf("postgres"));
  const asPostgres = (command: string): void => {
    execFileSync("su", ["postgres", "-c", command], { stdio: "pipe", timeout: 60_000 });
  };
  asPostgres(`${bin}/initdb -A trust -U postgres -D ${data}`);
  const ctl = (action: string): void => asPostgres(`${bin}/pg_ctl -D ${data} -o "-p ${port} -k ${dir} -c listen_addresses=127.0.0.1" -l ${dir}/pg.log -w ${action}`);
  onCleanup(() => asPostgres(`${bin}/pg_ctl -D ${data} -m immediate stop`));
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    async start() {
      ctl("start");
    },
    async stop() {
      // Immediate: no checkpoint, sessions are cut off, like a crash; recovery replays the WAL.
      ctl("-m immediate stop");
    },
  };
}

function uidOf(user: string): number {
  return Number(execFileSync("id", ["-u", user], { encoding: "utf8" }).trim());
}
function gidOf(user: string): number {
  return Number(execFileSync("id", ["-g", user], { encoding: "utf8" }).trim());
}

/** Retries a whole step: the server reconnects on its own schedule after the store is back. */
async function eventually<T>(run: () => Promise<T>, what: string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await run();
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(error as Error).message}`);
      await sleep(500);
    }
  }
}

const kinds: Array<Exclude<StoreKind, "fs">> = ["redis", "postgres"];

describe.each(kinds)("private %s", (kind) => {
  it("store down → 4xx and [SYS/TEMP]; store back → same process serves again", async () => {
    const tag = uniqueTag();
    const dir = tempDir(`outage-${kind}`);
    const backing = kind === "redis" ? await privateRedis(dir) : await privatePostgres(dir);
    await backing.start();
    const setup = storeSetup(kind, dir, tag, kind === "redis" ? { redis: backing.url } : { pg: backing.url });
    const config = writeConfig(dir, setup);
    const [user] = addUsers(config, ["outage"]);
    const server = await serve(config);
    await deliver(server.smtp, user!, [message(`before${tag}`, user!)]);

    // A transaction that passed RCPT while the store was up; the store dies during its DATA.
    const smtp = await smtpOpen(server.smtp);
    await smtp.expect("MAIL FROM:<sender@client.test>", /^250/);
    await smtp.expect(`RCPT TO:<${user}>`, /^250/);
    await smtp.expect("DATA", /^354/);
    const during = message(`during${tag}`, user!, 50_000);
    smtp.socket.write(during.slice(0, 1_000));
    await backing.stop();
    smtp.socket.write(`${during.slice(1_000)}.\r\n`);
    const end = await smtp.reply("end of data");
    const seen = [`open session end of DATA: ${end}`];
    expect(end).toMatch(/^4(21|5[12]) 4\.\d+\.\d+/);
    // The same session can try again (or gets 421 and is closed, which a client also retries).
    if (!end.startsWith("421")) {
      await smtp.expect("MAIL FROM:<sender@client.test>", /^250/);
      const again = await smtp.expect(`RCPT TO:<${user}>`, /^\d{3}/);
      seen.push(`open session RCPT: ${again}`);
      expect(again).toMatch(/^4(21|5[12]) 4\.\d+\.\d+/);
    }
    smtp.close();

    // A fresh SMTP session is refused temporarily as well (at RCPT or at the end of DATA).
    const fresh = await smtpOpen(server.smtp);
    await fresh.expect("MAIL FROM:<sender@client.test>", /^250|^4/);
    const freshRcpt = await fresh.expect(`RCPT TO:<${user}>`, /^\d{3}/);
    seen.push(`new session RCPT: ${freshRcpt}`);
    if (freshRcpt.startsWith("250")) {
      await fresh.expect("DATA", /^354/);
      fresh.socket.write(`${message(`during2${tag}`, user!)}.\r\n`);
      expect(await fresh.reply("end of data")).toMatch(/^4(21|5[12]) 4\.\d+\.\d+/);
    } else {
      expect(freshRcpt).toMatch(/^4(21|5[12]) 4\.\d+\.\d+/);
    }
    fresh.close();

    const pop = await LineClient.open(server.pop3);
    await pop.reply("greeting");
    await pop.expect(`USER ${user}`, /^\+OK/);
    const pass = await pop.expect(`PASS ${PASSWORD}`, /^-ERR/);
    seen.push(`POP3 PASS: ${pass}`);
    console.log(`[${kind}] while down:\n  ${seen.join("\n  ")}`);
    expect(pass).toMatch(/^-ERR \[SYS\/TEMP\]/);
    pop.close();

    await backing.start();
    expect(server.child.exitCode).toBeNull();
    await eventually(() => deliver(server.smtp, user!, [message(`after${tag}`, user!)]), "delivery after the store came back");
    const ids = await eventually(() => peek(server.pop3, user!, messageIds), "retrieval after the store came back");
    expect([...ids.values()].sort()).toEqual([`after${tag}`, `before${tag}`].sort());
  });
});
