import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBytes, readAll, type Logger, type Store } from "@mailroom/store";
import { Redis } from "ioredis";
import { createRedisStore } from "../src/index.js";
import { requireRedis } from "./services.js";

// The shared Redis must be reachable for this file too (same rule as every Redis test), but the outage
// itself happens on a private redis-server that this test starts and kills by pid.
const available = await requireRedis();

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const warnings: string[] = [];
const nothing = (): void => {};
const logger: Logger = {
  debug: nothing,
  info: nothing,
  warn: (a: Record<string, unknown> | string, b?: string) => void warnings.push(typeof a === "string" ? a : (b ?? "")),
  error: nothing,
  child: () => logger,
};

describe.skipIf(!available)("a private Redis with appendfsync always that crashes", () => {
  const dir = mkdtempSync(join(tmpdir(), "mailroom-redis-outage-"));
  let port = 0;
  let server: ChildProcess | undefined;
  let store: Store | undefined;

  async function startServer(): Promise<void> {
    const child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "allkeys-lru"],
      { stdio: "ignore" },
    );
    server = child;
    await new Promise<void>((resolve, reject) => {
      child.once("error", reject);
      child.once("spawn", () => resolve());
    });
  }

  function crashServer(): Promise<void> {
    const child = server;
    server = undefined;
    if (!child || child.exitCode !== null) return Promise.resolve();
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGKILL");
    return exited;
  }

  beforeAll(async () => {
    port = await freePort();
    await startServer();
  });

  afterAll(async () => {
    await store?.close();
    await crashServer();
    rmSync(dir, { recursive: true, force: true });
  });

  it("fails fast with \"unavailable\" while down, comes back by itself, and kept the acknowledged mail", async () => {
    // createRedisStore keeps retrying the first connect while the server starts.
    store = await createRedisStore({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs: 10_000, logger });
    expect(warnings.filter((w) => /AOF|appendfsync/.test(w))).toEqual([]);
    // An evicting policy could silently drop stored mail: the operator is told at start-up.
    expect(warnings.filter((w) => /maxmemory-policy/.test(w))).toHaveLength(1);
    const box = store.mailbox("alice@example.test");
    const info = await box.append(fromBytes("Subject: keep me\r\n\r\nacknowledged\r\n"));

    await crashServer();
    const started = Date.now();
    await expect(box.list()).rejects.toMatchObject({ code: "unavailable" });
    await expect(box.append(fromBytes("Subject: lost\r\n\r\n"))).rejects.toMatchObject({ code: "unavailable" });
    await expect(store.ping()).rejects.toMatchObject({ code: "unavailable" });
    expect(Date.now() - started).toBeLessThan(2_000);

    await startServer();
    const until = Date.now() + 10_000;
    for (;;) {
      try {
        await store.ping();
        break;
      } catch (error) {
        if (Date.now() > until) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    expect((await box.list()).map((m) => m.uid)).toEqual([info.uid]);
    expect(new TextDecoder().decode(await readAll(await box.read(info.uid)))).toContain("acknowledged");
  });

  it("refuses with \"no-space\" when Redis is out of memory, keeping nothing of the message", async () => {
    const admin = new Redis(`redis://127.0.0.1:${port}`, { lazyConnect: true, maxRetriesPerRequest: 0 });
    await admin.connect();
    try {
      const used = Number(/used_memory:(\d+)/.exec(String(await admin.call("INFO", "memory")))?.[1]);
      await admin.call("CONFIG", "SET", "maxmemory", String(used + 2 * 1024 * 1024));
      await admin.call("CONFIG", "SET", "maxmemory-policy", "noeviction");
      const box = store!.mailbox("bob@example.test");
      const big = new Uint8Array(8 * 1024 * 1024).fill(0x61);
      await expect(box.append(fromBytes(big))).rejects.toMatchObject({ code: "no-space" });
      await admin.call("CONFIG", "SET", "maxmemory", "0");
      expect(await box.list()).toEqual([]);
      expect(await admin.keys("*stage*")).toEqual([]);
    } finally {
      await admin.call("CONFIG", "SET", "maxmemory", "0").catch(() => {});
      await admin.quit();
    }
  });
});
