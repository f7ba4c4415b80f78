import { spawn, type ChildProcess } from "node:child_process";
import { connect, createServer } from "node:net";
import { Redis } from "ioredis";

/** Where the tests find Redis. */
export const redisUrl = process.env.MAILROOM_TEST_REDIS ?? "redis://127.0.0.1:6379";

const mustRun = Boolean(process.env.CI || process.env.MAILROOM_REQUIRE_SERVICES);
const maySkip = process.env.MAILROOM_SKIP_REDIS === "1" && !mustRun;

/** A plain connection for looking behind the store's back; fails fast instead of queueing. */
export function adminClient(): Redis {
  return new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
}

/**
 * Tries to reach Redis for a few seconds (it may still be starting). Unreachable Redis fails the test
 * file with a message saying how to fix it, unless MAILROOM_SKIP_REDIS=1 asked to skip (ignored in CI).
 * Resolves true when the tests should run.
 */
export async function requireRedis(deadlineMs = 5_000): Promise<boolean> {
  const until = Date.now() + deadlineMs;
  let last: unknown;
  while (Date.now() < until) {
    const client = adminClient();
    // The socket error (ECONNREFUSED, …) arrives as an event; the rejected connect only says "closed".
    let socketError: unknown;
    client.on("error", (error) => (socketError = error));
    try {
      await client.connect();
      await client.ping();
      await client.quit();
      return true;
    } catch (error) {
      last = socketError ?? error;
      client.disconnect();
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  if (maySkip) return false;
  const why = last instanceof Error ? last.message : String(last);
  throw new Error(
    `Redis is not reachable at ${redisUrl} (${why}). Start it (redis-server) or point MAILROOM_TEST_REDIS at one; ` +
      `MAILROOM_SKIP_REDIS=1 skips these tests outside CI.`,
  );
}

/** Deletes every key under a prefix (SCAN, never KEYS, so a shared Redis is not blocked). */
export async function deletePrefix(prefix: string): Promise<void> {
  const client = adminClient();
  client.on("error", () => {});
  await client.connect();
  try {
    let cursor = "0";
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) await client.unlink(...keys);
    } while (cursor !== "0");
  } finally {
    await client.quit();
  }
}

/** All keys under a prefix. */
export async function keysUnder(client: Redis, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = "0";
  do {
    const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
    cursor = next;
    out.push(...keys);
  } while (cursor !== "0");
  return out.sort();
}

/** A port that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A redis-server of the test's own, on a free port; `stop` kills it by pid (also while paused). */
export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  /** SIGSTOP: the connections stay open, nothing answers. */
  pause(): void;
  resume(): void;
  stop(): Promise<void>;
}

/** Any reply to a raw PING (even NOAUTH from a server with a password) means it is up. */
function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.setTimeout(500);
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => done(data[0] === 0x2b || data[0] === 0x2d));
    socket.once("error", () => done(false));
    socket.once("timeout", () => done(false));
  });
}

export async function startPrivateRedis(dir: string, args: readonly string[]): Promise<PrivateRedis> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--daemonize", "no", ...args],
    { stdio: "ignore" },
  );
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("spawn", () => resolve());
  });
  const stop = (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.kill("SIGCONT");
    child.kill("SIGKILL");
    return exited;
  };
  const until = Date.now() + 10_000;
  while (!(await answersPing(port))) {
    if (Date.now() > until || child.exitCode !== null) {
      await stop();
      throw new Error(`private redis-server on port ${port} did not start (args: ${args.join(" ")})`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pause: () => void child.kill("SIGSTOP"),
    resume: () => void child.kill("SIGCONT"),
    stop,
  };
}
