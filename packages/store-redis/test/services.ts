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
