import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Cluster, Redis } from "ioredis";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createRedisStore, redisAdapter } from "../src/index.js";

const mustRun = Boolean(process.env.CI);
const haveBinaries = ["redis-server", "redis-cli"].every((bin) => spawnSync(bin, ["--version"]).status === 0);
if (!haveBinaries && mustRun) throw new Error("redis-server and redis-cli are needed for the Redis Cluster tests");

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** A port that is free together with its cluster bus port (port + 10000). */
async function freeClusterPort(taken: Set<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 30_000);
    if (taken.has(port)) continue;
    if ((await portFree(port)) && (await portFree(port + 10_000))) {
      taken.add(port);
      return port;
    }
  }
  throw new Error("no free port pair for a Redis Cluster node");
}

async function untilTrue(what: string, deadlineMs: number, check: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    if (await check().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`Redis Cluster test setup: ${what} did not happen within ${deadlineMs} ms`);
}

async function withNode<T>(port: number, action: (client: Redis) => Promise<T>): Promise<T> {
  const client = new Redis({ host: "127.0.0.1", port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  try {
    await client.connect();
    return await action(client);
  } finally {
    client.disconnect();
  }
}

const dir = haveBinaries ? mkdtempSync(join(tmpdir(), "mailroom-redis-cluster-")) : "";
const servers: ChildProcess[] = [];
let nodes: string[] = [];
let admin: Cluster | undefined;

beforeAll(async () => {
  if (!haveBinaries) return;
  const taken = new Set<number>();
  const ports = [await freeClusterPort(taken), await freeClusterPort(taken), await freeClusterPort(taken)];
  for (const port of ports) {
    const args = ["--port", String(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"];
    args.push("--cluster-config-file", join(dir, `nodes-${port}.conf`), "--dir", dir, "--save", "", "--appendonly", "no");
    args.push("--daemonize", "no");
    servers.push(spawn("redis-server", args, { stdio: "ignore" }));
  }
  for (const port of ports) await untilTrue(`node ${port} answering`, 10_000, () => withNode(port, async (c) => (await c.ping()) === "PONG"));
  nodes = ports.map((port) => `127.0.0.1:${port}`);
  const created = spawnSync("redis-cli", ["--cluster", "create", ...nodes, "--cluster-replicas", "0", "--cluster-yes"], {
    encoding: "utf8",
    timeout: 30_000,
  });
  if (created.status !== 0) throw new Error(`redis-cli --cluster create failed: ${created.stdout}${created.stderr}`);
  for (const port of ports) {
    await untilTrue(`cluster_state:ok on ${port}`, 20_000, () =>
      withNode(port, async (c) => String(await c.call("CLUSTER", "INFO")).includes("cluster_state:ok")),
    );
  }
  admin = new Cluster(nodes.map((n) => ({ host: "127.0.0.1", port: Number(n.split(":")[1]) })));
  admin.on("error", () => {});
  await untilTrue("admin client ready", 10_000, async () => admin?.status === "ready");
}, 90_000);

afterAll(async () => {
  admin?.disconnect();
  for (const server of servers) {
    if (server.pid !== undefined && server.exitCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      process.kill(server.pid, "SIGKILL");
      await exited;
    }
  }
  if (dir !== "") rmSync(dir, { recursive: true, force: true });
});

/** Every key under a prefix, from every master (SCAN only sees the node it is sent to). */
async function keysUnder(prefix: string): Promise<string[]> {
  const out: string[] = [];
  for (const node of admin?.nodes("master") ?? []) {
    let cursor = "0";
    do {
      const [next, keys] = await node.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      out.push(...keys);
    } while (cursor !== "0");
  }
  return out.sort();
}

async function deletePrefix(prefix: string): Promise<void> {
  // One key per UNLINK: keys of different slots may not share a command.
  for (const key of await keysUnder(prefix)) await admin?.unlink(key);
}

describe.skipIf(!haveBinaries)("redis cluster", () => {
  describeStoreConformance({
    name: "redis-cluster",
    open: (ns) => createRedisStore({ cluster: { nodes }, prefix: `mrtest:${ns}:` }),
    destroy: (ns) => deletePrefix(`mrtest:${ns}:`),
  });

  it("spreads one delivery over several slots and lists every mailbox", async () => {
    const prefix = `mrtest:spread${Date.now().toString(36)}:`;
    const store = await createRedisStore({ cluster: { nodes }, prefix });
    try {
      const ids = Array.from({ length: 12 }, (_, i) => `user${i}@example.test`);
      const delivered = await store.deliver(ids, (async function* () {
        yield new TextEncoder().encode("Subject: hi\r\n\r\nhello\r\n");
      })());
      expect(delivered.map((d) => d.mailbox)).toEqual(ids);
      expect(await store.listMailboxes()).toEqual([...ids].sort());
      // The bodies really live on more than one master.
      const perMaster = await Promise.all(
        (admin?.nodes("master") ?? []).map(async (node) => (await node.scan("0", "MATCH", `${prefix}*`, "COUNT", 10_000))[1].length),
      );
      expect(perMaster.filter((n) => n > 0).length).toBeGreaterThan(1);
    } finally {
      await store.close();
      await deletePrefix(prefix);
    }
  });

  it("works on a Cluster client passed in, and leaves it open on close", async () => {
    const prefix = `mrtest:given${Date.now().toString(36)}:`;
    const store = await createRedisStore({ client: admin!, prefix });
    try {
      const info = await store.mailbox("bob@example.test").append((async function* () {
        yield new TextEncoder().encode("x\r\n");
      })());
      expect(info.size).toBe(3);
      expect(await store.listMailboxes()).toEqual(["bob@example.test"]);
    } finally {
      await store.close();
    }
    expect(admin?.status).toBe("ready");
    await deletePrefix(prefix);
  });

  it("opens through the adapter with cluster_nodes", async () => {
    const store = await redisAdapter.open("redis://127.0.0.1", { cluster_nodes: nodes, prefix: "mrtest:adapter:" });
    try {
      await store.ping();
      expect(await store.listMailboxes()).toEqual([]);
    } finally {
      await store.close();
    }
    const fromEnv = await redisAdapter.open("redis://127.0.0.1", { cluster_nodes: nodes.join(", "), prefix: "mrtest:adapter:" });
    await fromEnv.close();
    await expect(redisAdapter.open("redis://127.0.0.1", { cluster_nodes: ["no-port"] })).rejects.toThrow(/cluster_nodes/);
    await expect(redisAdapter.open("redis://127.0.0.1", { cluster_nodes: nodes, wait_replicas: 1 })).rejects.toThrow(/wait_replicas/);
  });
});
