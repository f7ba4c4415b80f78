import { describe, expect, it } from "vitest";
import { fromBytes, type Logger } from "@mailroom/store";
import redisAdapter, { connectionOptions, createRedisStore } from "../src/index.js";
import { adminClient, deletePrefix, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();

interface Line {
  level: string;
  fields: Record<string, unknown>;
  message: string;
}

function capturingLogger(lines: Line[]): Logger {
  const at =
    (level: string) =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      if (typeof fieldsOrMessage === "string") lines.push({ level, fields: {}, message: fieldsOrMessage });
      else lines.push({ level, fields: fieldsOrMessage, message: message ?? "" });
    };
  const logger: Logger = { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), child: () => logger };
  return logger;
}

const prefix = (what: string) => `mrtest:adapter_${what}_${process.pid}_${Date.now().toString(36)}:`;

describe("redisAdapter", () => {
  it("claims the redis and rediss schemes and lists its option keys", () => {
    expect(redisAdapter.name).toBe("redis");
    expect(redisAdapter.schemes).toEqual(["redis", "rediss"]);
    expect(redisAdapter.optionKeys).toContain("prefix");
  });

  it("rejects option values of the wrong type, naming the key", async () => {
    await expect(redisAdapter.open(redisUrl, { chunk_bytes: "big" })).rejects.toThrow(/"chunk_bytes"/);
    await expect(redisAdapter.open(redisUrl, { prefix: 42 })).rejects.toThrow(/"prefix"/);
    await expect(redisAdapter.open(redisUrl, { wait_replicas: -1 })).rejects.toThrow(/"wait_replicas"/);
    await expect(redisAdapter.open(redisUrl, { colour: "blue" })).rejects.toThrow(/"colour"/);
    await expect(redisAdapter.open(redisUrl, { command_timeout_ms: -1 })).rejects.toThrow(/"command_timeout_ms"/);
  });

  it("gives every command of its own connection a timeout, 15 s unless configured", () => {
    expect(connectionOptions()).toMatchObject({ commandTimeout: 15_000 });
    expect(connectionOptions("mx1", 2_000)).toMatchObject({ commandTimeout: 2_000, connectionName: "mx1" });
    // ioredis would time out every command at once with 0, so "no limit" leaves the option out.
    expect(connectionOptions(undefined, 0)).not.toHaveProperty("commandTimeout");
  });

  it("refuses a WAIT that could outlast the command timeout, which would fail mail already stored", async () => {
    const wait = { wait_replicas: 1, command_timeout_ms: 2_000 };
    await expect(redisAdapter.open(redisUrl, { ...wait, wait_timeout_ms: 2_000 })).rejects.toThrow(
      /"wait_timeout_ms" must be at least 1 and below "command_timeout_ms" \(2000\)/,
    );
    // WAIT with a timeout of 0 blocks without limit.
    await expect(redisAdapter.open(redisUrl, { ...wait, wait_timeout_ms: 0 })).rejects.toThrow(/"wait_timeout_ms"/);
  });

  it("refuses a prefix with braces, which would become every key's hash tag", async () => {
    await expect(createRedisStore({ url: redisUrl, prefix: "mail{room}:" })).rejects.toThrow(/"prefix"/);
  });
});

describe.skipIf(!available)("redis store set-up", () => {
  it("opens through the adapter and answers ping", async () => {
    const p = prefix("open");
    // Config files may hand integers over as bigint.
    const store = await redisAdapter.open(redisUrl, { prefix: p, chunk_bytes: 4096n, connect_timeout_ms: 5000 });
    try {
      expect(store.kind).toBe("redis");
      expect(store.capabilities).toEqual({ sharedAcrossProcesses: true, boundedMemory: true });
      await store.ping();
      const box = store.mailbox("alice@example.test");
      const info = await box.append(fromBytes("x".repeat(10_000)));
      const admin = adminClient();
      await admin.connect();
      expect(await admin.llen(`${p}{mb:alice@example.test}:body:${info.uid}`)).toBe(3);
      await admin.quit();
    } finally {
      await store.close();
      await store.close();
      await deletePrefix(p);
    }
  });

  it("warns at start-up exactly when Redis could lose acknowledged mail", async () => {
    const admin = adminClient();
    await admin.connect();
    const config = (await admin.call("CONFIG", "GET", "append*")) as string[];
    const [, policy] = (await admin.call("CONFIG", "GET", "maxmemory-policy")) as string[];
    await admin.quit();
    const get = (name: string) => config[config.indexOf(name) + 1];
    const safe = get("appendonly") === "yes" && get("appendfsync") === "always";

    const lines: Line[] = [];
    const store = await createRedisStore({ url: redisUrl, prefix: prefix("durability"), logger: capturingLogger(lines) });
    await store.close();
    const warnings = lines.filter((l) => l.level === "warn" && /AOF|appendfsync/.test(l.message));
    expect(warnings.length).toBe(safe ? 0 : 1);
    const eviction = lines.filter((l) => l.level === "warn" && /maxmemory-policy/.test(l.message));
    expect(eviction.length).toBe(policy === "noeviction" ? 0 : 1);
  });

  it("refuses waitReplicas with a cluster client of the user's own, also one from another copy of ioredis", async () => {
    const { Cluster } = await import("ioredis");
    const ours = new Cluster([{ host: "127.0.0.1", port: 6379 }], { lazyConnect: true });
    // What a cluster client from a second copy of ioredis looks like to us: not our class, but marked.
    const foreign = { isCluster: true, status: "wait" } as unknown as InstanceType<typeof Cluster>;
    for (const client of [ours, foreign]) {
      await expect(createRedisStore({ client, prefix: prefix("cluster"), waitReplicas: 1 })).rejects.toThrow(/not supported on Redis Cluster/);
    }
    ours.disconnect();
  });

  it("with waitReplicas: a WAIT cut off after the commit keeps the mail acknowledged (no 4xx, no duplicate on retry)", async () => {
    const p = prefix("waitcut");
    const lines: Line[] = [];
    const name = `mrtest-waitcut-${process.pid}`;
    const store = await createRedisStore({ url: redisUrl, prefix: p, waitReplicas: 1, waitTimeoutMs: 10_000, connectionName: name, logger: capturingLogger(lines) });
    const admin = adminClient();
    await admin.connect();
    try {
      const box = store.mailbox("alice@example.test");
      const appending = box.append(fromBytes("Subject: hi\r\n\r\nhello\r\n"));
      // The commit is done once the store sits in WAIT; then its connection breaks (or a failover
      // answers UNBLOCKED).
      let killed = false;
      for (let i = 0; i < 200 && !killed; i++) {
        const list = String(await admin.call("CLIENT", "LIST"));
        const line = list.split("\n").find((l) => l.includes(`name=${name}`) && l.includes("cmd=wait"));
        if (line) {
          await admin.call("CLIENT", "KILL", "ID", /id=(\d+)/.exec(line)![1]!);
          killed = true;
        } else await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(killed).toBe(true);
      const info = await appending;
      await new Promise((resolve) => setTimeout(resolve, 300)); // the connection comes back by itself
      expect((await box.list()).map((m) => m.uid)).toEqual([info.uid]);
      expect(lines.some((l) => l.level === "warn" && /committed, but waiting for its replicas failed/.test(l.message))).toBe(true);
    } finally {
      admin.disconnect();
      await store.close();
      await deletePrefix(p);
    }
  });

  it("with waitReplicas and no replica: the mail is kept and the shortfall is logged", async () => {
    const p = prefix("wait");
    const lines: Line[] = [];
    const store = await createRedisStore({
      url: redisUrl,
      prefix: p,
      waitReplicas: 1,
      waitTimeoutMs: 50,
      logger: capturingLogger(lines),
    });
    try {
      const box = store.mailbox("alice@example.test");
      const info = await box.append(fromBytes("Subject: hi\r\n\r\nhello\r\n"));
      expect((await box.list()).map((m) => m.uid)).toEqual([info.uid]);
      expect(lines.some((l) => l.level === "warn" && /reached only 0 of 1 replicas/.test(l.message))).toBe(true);
    } finally {
      await store.close();
      await deletePrefix(p);
    }
  });
});
