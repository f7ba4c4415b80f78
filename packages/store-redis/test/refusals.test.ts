import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { fromBytes, type Store } from "@mailroom/store";
import { Redis } from "ioredis";
import { connectionOptions, createRedisStore } from "../src/index.js";
import { requireRedis, startPrivateRedis, type PrivateRedis } from "./services.js";

// Same rule as every Redis test file; the faults themselves happen on private redis-servers that each
// test starts and stops by pid.
const available = await requireRedis();

const base = mkdtempSync(join(tmpdir(), "mailroom-redis-refusals-"));
let dirs = 0;
const freshDir = (): string => {
  const dir = join(base, String(++dirs));
  mkdirSync(dir);
  return dir;
};

const servers: PrivateRedis[] = [];
const stores: Store[] = [];
const clients: Redis[] = [];

async function start(dir: string, args: readonly string[]): Promise<PrivateRedis> {
  const server = await startPrivateRedis(dir, args);
  servers.push(server);
  return server;
}

async function open(options: Parameters<typeof createRedisStore>[0]): Promise<Store> {
  const store = await createRedisStore(options);
  stores.push(store);
  return store;
}

function admin(url: string): Redis {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  clients.push(client);
  return client;
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

afterEach(async () => {
  // Servers first: closing a store sends QUIT, which must not wait on a paused server.
  for (const server of servers.splice(0)) await server.stop();
  for (const store of stores.splice(0)) await store.close();
  for (const client of clients.splice(0)) client.disconnect();
});

afterAll(() => rmSync(base, { recursive: true, force: true }));

const message = (subject: string) => fromBytes(`Subject: ${subject}\r\n\r\nbody\r\n`);
const envelope = { sender: "a@example.test", recipients: ["b@remote.test"] };

describe.skipIf(!available)("a private Redis that cannot persist", () => {
  it("refuses writes with \"unavailable\" after a failed RDB snapshot, keeps serving reads, and takes mail again once it can save", async () => {
    const dir = freshDir();
    // Protected configs on, so that the test can point Redis at a new dir (CONFIG SET dir) afterwards.
    const server = await start(dir, ["--save", "3600 1", "--appendonly", "no", "--enable-protected-configs", "yes"]);
    const store = await open({ url: server.url });
    const box = store.mailbox("alice@example.test");
    const kept = await box.append(message("before"));

    // The snapshot cannot be written any more (as on a full disk or an unwritable dir); Redis then
    // refuses every write with "MISCONF ... unable to persist to disk" (stop-writes-on-bgsave-error).
    rmSync(dir, { recursive: true });
    const redis = admin(server.url);
    await redis.connect();
    await redis.bgsave();
    await until("the failed BGSAVE", async () => /rdb_last_bgsave_status:err/.test(await redis.info("persistence")));

    const refused = { code: "unavailable", temporary: true, message: expect.stringMatching(/MISCONF/) };
    await expect(box.append(message("during"))).rejects.toMatchObject(refused);
    await expect(store.deliver(["alice@example.test", "bob@example.test"], message("during"))).rejects.toMatchObject(refused);
    await expect(store.queue.enqueue(envelope, message("during"))).rejects.toMatchObject(refused);
    expect((await box.list()).map((m) => m.uid)).toEqual([kept.uid]);

    mkdirSync(dir);
    await redis.config("SET", "dir", dir);
    await redis.bgsave();
    await until("a good BGSAVE", async () => /rdb_last_bgsave_status:ok/.test(await redis.info("persistence")));
    const later = await box.append(message("after"));
    expect((await box.list()).map((m) => m.uid)).toEqual([kept.uid, later.uid]);
  });

  // /dev/full fails every write with ENOSPC: the AOF behaves as on a full disk.
  it.skipIf(!existsSync("/dev/full"))("refuses writes with \"no-space\" when the AOF cannot be written for lack of space", async () => {
    const dir = freshDir();
    const args = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--appenddirname", "aof"];
    // A first start lays out the AOF files; the second one appends to an incr file that is /dev/full.
    await (await start(dir, args)).stop();
    const incr = join(dir, "aof", "appendonly.aof.1.incr.aof");
    unlinkSync(incr);
    symlinkSync("/dev/full", incr);
    const server = await start(dir, args);

    // (With appendfsync always, Redis exits on a failed AOF write instead: that is an outage.)
    const redis = admin(server.url);
    await redis.connect();
    await until("the first failed AOF write", async () => {
      const reply = await redis.set("probe", "1").catch((error: unknown) => error);
      return reply instanceof Error && /MISCONF/.test(reply.message);
    });

    const store = await open({ url: server.url });
    const refused = { code: "no-space", temporary: true, message: expect.stringMatching(/No space left on device/) };
    await expect(store.mailbox("alice@example.test").append(message("full"))).rejects.toMatchObject(refused);
    await expect(store.queue.enqueue(envelope, message("full"))).rejects.toMatchObject(refused);
  });
});

describe.skipIf(!available)("a private Redis whose AOF skips the fsync during rewrites", () => {
  it("warns at start that acknowledged mail can be lost while a rewrite runs", async () => {
    const server = await start(freshDir(), ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--no-appendfsync-on-rewrite", "yes"]);
    const warnings: string[] = [];
    const logger = { debug() {}, info() {}, warn: (_f: unknown, m?: string) => void warnings.push(m ?? ""), error() {}, child: () => logger };
    await open({ url: server.url, connectTimeoutMs: 10_000, logger });
    expect(warnings.filter((w) => /no-appendfsync-on-rewrite is on/.test(w))).toHaveLength(1);
  });
});

describe.skipIf(!available)("a private Redis with a password or ACL the store does not match", () => {
  it("fails to open with \"unavailable\" when the password is wrong", async () => {
    const server = await start(freshDir(), ["--save", "", "--requirepass", "s3cret"]);
    const error = await createRedisStore({ url: `redis://:wrong@127.0.0.1:${server.port}`, connectTimeoutMs: 1_000 }).catch(
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: "unavailable", message: expect.stringMatching(/WRONGPASS/) });
  });

  it("answers \"unavailable\" when a command comes back NOAUTH", async () => {
    const server = await start(freshDir(), ["--save", "", "--requirepass", "s3cret"]);
    const client = new Redis(`redis://:s3cret@127.0.0.1:${server.port}`, connectionOptions());
    client.on("error", () => {});
    clients.push(client);
    const store = await open({ client });
    const box = store.mailbox("alice@example.test");
    await box.append(message("before"));

    // The connection is no longer logged in, as behind a proxy that reconnected without the password.
    await client.call("RESET");
    const refused = { code: "unavailable", temporary: true, message: expect.stringMatching(/NOAUTH/) };
    await expect(box.append(message("during"))).rejects.toMatchObject(refused);
    await expect(box.list()).rejects.toMatchObject(refused);
  });

  it("answers \"unavailable\" when the ACL user may no longer run the store's commands", async () => {
    const server = await start(freshDir(), ["--save", ""]);
    const redis = admin(server.url);
    await redis.connect();
    await redis.call("ACL", "SETUSER", "mailroom", "on", ">pw", "~*", "&*", "+@all");
    const store = await open({ url: `redis://mailroom:pw@127.0.0.1:${server.port}` });
    const box = store.mailbox("alice@example.test");
    await box.append(message("before"));

    await redis.call("ACL", "SETUSER", "mailroom", "-@scripting");
    const refused = { code: "unavailable", temporary: true, message: expect.stringMatching(/NOPERM/) };
    await expect(box.append(message("during"))).rejects.toMatchObject(refused);
    await expect(store.queue.enqueue(envelope, message("during"))).rejects.toMatchObject(refused);

    await redis.call("ACL", "SETUSER", "mailroom", "+@all");
    await box.append(message("after"));
    expect(await box.list()).toHaveLength(2);
  });
});

describe.skipIf(!available)("a private Redis that stops answering", () => {
  it("fails every call with \"unavailable\" after commandTimeoutMs instead of hanging, and recovers when it answers again", async () => {
    const server = await start(freshDir(), ["--save", "", "--appendonly", "no"]);
    const store = await open({ url: server.url, commandTimeoutMs: 300 });
    const box = store.mailbox("alice@example.test");
    const kept = await box.append(message("before"));

    // SIGSTOP: the socket stays open and the kernel keeps accepting bytes, but no reply ever comes,
    // as with a frozen VM or a network that drops packets without a reset.
    server.pause();
    const started = Date.now();
    const timedOut = { code: "unavailable", temporary: true, message: expect.stringMatching(/timed out/) };
    await expect(box.list()).rejects.toMatchObject(timedOut);
    await expect(box.append(message("during"))).rejects.toMatchObject(timedOut);
    await expect(store.deliver(["alice@example.test", "bob@example.test"], message("during"))).rejects.toMatchObject(timedOut);
    await expect(store.queue.enqueue(envelope, message("during"))).rejects.toMatchObject(timedOut);
    // The RCPT lookup is a pipeline: each of its commands is timed as well.
    await expect(store.directory.recipientLookups!("alice@example.test")).rejects.toMatchObject(timedOut);
    await expect(store.ping()).rejects.toMatchObject({ code: "unavailable" });
    expect(Date.now() - started).toBeLessThan(5_000);

    server.resume();
    await until("the store answering again", async () => {
      await store.ping();
      return true;
    });
    // Every call above failed at its first command, so none of them left a message behind.
    expect((await box.list()).map((m) => m.uid)).toEqual([kept.uid]);
  });
});
