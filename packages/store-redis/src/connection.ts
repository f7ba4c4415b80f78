import { Cluster, Redis, type RedisOptions } from "ioredis";
import { StoreError, type Logger } from "@mailroom/store";

/** How long one command may wait for its reply by default. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 15_000;

/**
 * Client settings for a mail server: a command fails at once while Redis is unreachable (the SMTP
 * session answers 451 and the sender retries later) instead of waiting in an offline queue, and the
 * connection comes back by itself. Commands that were in flight when the socket broke are not resent:
 * replaying a commit could store a message twice.
 *
 * A Redis that is connected but does not answer (a stopped process, a network that drops packets
 * without a reset) breaks no socket for minutes, so each command also gives up after
 * `commandTimeoutMs` (0: never).
 */
export function connectionOptions(
  connectionName?: string,
  commandTimeoutMs: number = DEFAULT_COMMAND_TIMEOUT_MS,
): Omit<RedisOptions, "replyMapping"> {
  return {
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    connectTimeout: 5_000,
    // ioredis arms a timer for any number, even 0, so "no limit" must leave the option out.
    ...(commandTimeoutMs > 0 ? { commandTimeout: commandTimeoutMs } : {}),
    retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2_000),
    ...(connectionName === undefined ? {} : { connectionName }),
  };
}

export function createClient(url: string, connectionName: string | undefined, commandTimeoutMs: number): Redis {
  return new Redis(url, connectionOptions(connectionName, commandTimeoutMs));
}

/** A single Redis or a Redis Cluster; the store only uses commands both have. */
export type RedisClient = Redis | Cluster;

/** Splits "host:port" (IPv6 hosts in brackets: "[::1]:7001"). */
export function parseNode(node: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(node);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (match[1] ?? match[2])!, port };
}

/**
 * A cluster client with the same fail-fast settings as {@link connectionOptions}. Credentials and TLS
 * come from the URL (its host and database are not used: a cluster has only database 0).
 */
export function createCluster(
  nodes: readonly string[],
  url: string | undefined,
  connectionName: string | undefined,
  commandTimeoutMs: number,
): Cluster {
  const { retryStrategy, enableOfflineQueue, ...perNode } = connectionOptions(connectionName, commandTimeoutMs);
  const auth: Omit<RedisOptions, "replyMapping"> = {};
  if (url !== undefined) {
    const parsed = new URL(url);
    if (parsed.username !== "") auth.username = decodeURIComponent(parsed.username);
    if (parsed.password !== "") auth.password = decodeURIComponent(parsed.password);
    if (parsed.protocol === "rediss:") auth.tls = {};
  }
  return new Cluster(
    nodes.map((node) => parseNode(node)!),
    {
      enableOfflineQueue,
      clusterRetryStrategy: (times) => retryStrategy?.(times) ?? 2_000,
      redisOptions: { ...perNode, ...auth },
    },
  );
}

/**
 * Logs connection trouble without ever letting an 'error' event go unhandled (which would crash the
 * process). One warning per outage; the repeats of a reconnect loop go to debug.
 */
export function watchConnection(client: RedisClient, logger: Logger): () => void {
  let failing = false;
  const onError = (error: Error): void => {
    if (failing) {
      logger.debug({ error: error.message }, "redis store: still no connection");
      return;
    }
    failing = true;
    logger.warn({ error: error.message }, "redis store: connection problem; commands fail until it is back");
  };
  const onReady = (): void => {
    if (failing) logger.info("redis store: connection is back");
    failing = false;
  };
  client.on("error", onError);
  client.on("ready", onReady);
  return () => {
    client.off("error", onError);
    client.off("ready", onReady);
  };
}

/** Waits (bounded) for the first connection; ioredis keeps retrying underneath meanwhile. */
export function waitReady(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === "ready") return Promise.resolve();
  if (client.status === "wait") client.connect().catch(() => {});
  return new Promise((resolve, reject) => {
    let lastError: Error | undefined;
    const cleanup = (): void => {
      clearTimeout(timer);
      client.off("ready", onReady);
      client.off("error", onError);
      client.off("end", onEnd);
    };
    const fail = (why: string): void => {
      cleanup();
      const cause = lastError === undefined ? "" : `: ${lastError.message}`;
      reject(new StoreError("unavailable", `redis: ${why}${cause}`, { cause: lastError }));
    };
    const onReady = (): void => {
      cleanup();
      resolve();
    };
    const onError = (error: Error): void => {
      lastError = error;
    };
    const onEnd = (): void => fail("connection ended before it was ready");
    const timer = setTimeout(() => fail(`no connection within ${timeoutMs} ms`), timeoutMs);
    client.on("ready", onReady);
    client.on("error", onError);
    client.on("end", onEnd);
  });
}

function pairs(reply: unknown): Map<string, string> {
  const out = new Map<string, string>();
  if (Array.isArray(reply)) {
    for (let i = 0; i + 1 < reply.length; i += 2) out.set(String(reply[i]), String(reply[i + 1]));
  } else if (reply && typeof reply === "object") {
    for (const [k, v] of Object.entries(reply)) out.set(k, String(v));
  }
  return out;
}

/**
 * True for a Redis Cluster client. ioredis marks both of its classes with `isCluster`; a check by
 * `instanceof` would miss a cluster client made with another copy of ioredis than ours (a user's own
 * version), and the store would then treat it as one server.
 */
export function isCluster(client: unknown): client is Cluster {
  return typeof client === "object" && client !== null && (client as { isCluster?: unknown }).isCluster === true;
}

/** One CONFIG value, or undefined where CONFIG is restricted or the key unknown. */
async function configValue(client: RedisClient, key: string): Promise<string | undefined> {
  try {
    return pairs(await client.call("CONFIG", "GET", key)).get(key);
  } catch {
    return undefined;
  }
}

/**
 * Tells the operator at start-up when Redis is set up so that mail acknowledged with 250 can vanish in
 * a crash. Managed services often disable CONFIG; then we can only say that we could not check.
 */
export async function checkDurability(client: RedisClient, logger: Logger, waitReplicas: number): Promise<void> {
  // Not `instanceof`: a client from the user's own copy of ioredis is another class.
  if (isCluster(client)) {
    // CONFIG and INFO go to one random node in a cluster; every master holds mail, so ask each one.
    for (const node of client.nodes("master")) await checkDurability(node, logger, waitReplicas);
    return;
  }
  let config: Map<string, string>;
  try {
    config = pairs(await client.call("CONFIG", "GET", "append*"));
  } catch (error) {
    logger.info(
      { error: error instanceof Error ? error.message : String(error) },
      "redis store: cannot read CONFIG; make sure Redis uses appendonly yes with appendfsync always",
    );
    return;
  }
  const appendonly = config.get("appendonly");
  const appendfsync = config.get("appendfsync");
  if (appendonly !== "yes") {
    logger.warn(
      { appendonly },
      "redis store: Redis runs without AOF; mail acknowledged since the last RDB snapshot is lost if Redis crashes or restarts",
    );
  } else if (appendfsync !== "always") {
    logger.warn(
      { appendfsync },
      "redis store: appendfsync is not 'always'; about the last second of acknowledged mail can be lost if the Redis host crashes",
    );
  } else if ((await configValue(client, "no-appendfsync-on-rewrite")) === "yes") {
    logger.warn(
      { "no-appendfsync-on-rewrite": "yes" },
      "redis store: no-appendfsync-on-rewrite is on; while Redis rewrites its AOF or saves a snapshot, acknowledged mail is not fsynced and can be lost if the host crashes",
    );
  }
  try {
    const policy = pairs(await client.call("CONFIG", "GET", "maxmemory-policy")).get("maxmemory-policy");
    if (policy !== undefined && policy !== "noeviction") {
      logger.warn(
        { policy },
        "redis store: maxmemory-policy is not 'noeviction'; under memory pressure Redis may evict stored mail",
      );
    }
  } catch {
    // Same as above: CONFIG may be restricted.
  }
  if (waitReplicas > 0) {
    try {
      const info = String(await client.call("INFO", "replication"));
      const connected = Number(/connected_slaves:(\d+)/.exec(info)?.[1] ?? 0);
      if (connected < waitReplicas) {
        logger.warn({ connected, waitReplicas }, "redis store: fewer replicas connected than waitReplicas asks for");
      }
    } catch {
      // INFO may be disabled as well; the per-write WAIT still reports shortfalls.
    }
  }
}
