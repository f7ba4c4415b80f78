import type { Cluster, Redis } from "ioredis";
import {
  StoreError,
  assertMailboxId,
  countBytes,
  guardAppendSource,
  silentLogger,
  type Delivered,
  type DeliverOptions,
  type Directory,
  type Logger,
  type Mailbox,
  type MailboxId,
  type Queue,
  type Store,
} from "@mailroom/store";
import {
  DEFAULT_COMMAND_TIMEOUT_MS,
  checkDurability,
  createClient,
  createCluster,
  isCluster,
  parseNode,
  waitReady,
  watchConnection,
} from "./connection.js";
import { afterDurableWrite, call, type Context } from "./context.js";
import { RedisDirectory } from "./directory.js";
import { toStoreError } from "./errors.js";
import { DirectoryKeys, MailboxKeys, assertPrefix } from "./keys.js";
import { RedisMailbox } from "./mailbox.js";
import { MailboxStaging, allocateUid, commit, stageAll, uncommit } from "./messages.js";
import { RedisQueue } from "./queue.js";
import { defineScripts } from "./scripts.js";

export interface RedisClusterOptions {
  /** Seed nodes as "host:port"; the rest of the cluster is discovered from them. */
  readonly nodes: readonly string[];
}

export interface RedisStoreOptions {
  /**
   * `redis://` or `rediss://` URL. Ignored when `client` is given. Default `redis://127.0.0.1:6379`.
   * With `cluster`, only its user, password and scheme (TLS) are used.
   */
  readonly url?: string;
  /**
   * Use this connection (a `Redis` or a `Cluster`) instead of opening one. The store does not close it,
   * and does not change its settings (see the README for the ones we recommend).
   */
  readonly client?: Redis | Cluster;
  /** Open a Redis Cluster client on these seed nodes instead of a single connection. */
  readonly cluster?: RedisClusterOptions;
  /** Start of every key. Must not contain `{` or `}`. Default `mailroom:`. */
  readonly prefix?: string;
  /** Size of the pieces a message is stored and read in. Default 256 KiB. */
  readonly chunkBytes?: number;
  readonly logger?: Logger;
  /** CLIENT SETNAME for the connection the store opens (shows in CLIENT LIST). */
  readonly connectionName?: string;
  /** How long `createRedisStore` waits for the first connection. Default 10 s. */
  readonly connectTimeoutMs?: number;
  /**
   * How long one command waits for Redis' reply before it fails with "unavailable" (a Redis that
   * stopped answering without closing the connection). 0: wait without limit. Default 15 s. Not
   * applied to a `client` you pass in.
   */
  readonly commandTimeoutMs?: number;
  /** After each acknowledged write, WAIT until this many replicas have it. Default 0 (no WAIT). */
  readonly waitReplicas?: number;
  /** Upper bound of one WAIT. Default 1000 ms. With `waitReplicas`, from 1 to below `commandTimeoutMs`. */
  readonly waitTimeoutMs?: number;
  /** How long an abandoned append's staged chunks live. Default 15 minutes after the last chunk. */
  readonly stagingTtlMs?: number;
}

const DEFAULT_URL = "redis://127.0.0.1:6379";
const MAX_CHUNK = 64 * 1024 * 1024;

function integerOption(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new Error(`redis store: option "${name}" must be an integer from ${min} to ${max}`);
  }
  return value;
}

function stringOption(name: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new Error(`redis store: option "${name}" must be a string`);
  return value;
}

function clusterOption(name: string, value: unknown): readonly string[] | undefined {
  if (value === undefined) return undefined;
  const nodes: unknown = value !== null && typeof value === "object" && "nodes" in value ? value.nodes : undefined;
  if (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every((n) => typeof n === "string" && parseNode(n) !== undefined)) {
    throw new Error(`redis store: option "${name}" must be a non-empty list of "host:port" strings`);
  }
  return nodes as string[];
}

/** Checks option types (they may come from a config file) and fills in defaults. */
export function resolveOptions(options: RedisStoreOptions, nameOf: (key: keyof RedisStoreOptions) => string = (key) => key) {
  const prefix = stringOption(nameOf("prefix"), options.prefix) ?? "mailroom:";
  assertPrefix(prefix, nameOf("prefix"));
  const clusterNodes = clusterOption(nameOf("cluster"), options.cluster);
  const waitReplicas = integerOption(nameOf("waitReplicas"), options.waitReplicas, 0) ?? 0;
  if (waitReplicas > 0 && (clusterNodes !== undefined || isCluster(options.client))) {
    // WAIT has no key, so a cluster client would send it to a random node rather than the one written.
    throw new Error(`redis store: option "${nameOf("waitReplicas")}" is not supported on Redis Cluster`);
  }
  const commandTimeoutMs = integerOption(nameOf("commandTimeoutMs"), options.commandTimeoutMs, 0) ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const waitTimeoutMs = integerOption(nameOf("waitTimeoutMs"), options.waitTimeoutMs, 0) ?? 1_000;
  const waitOutlasts = waitTimeoutMs === 0 || waitTimeoutMs >= commandTimeoutMs;
  if (waitReplicas > 0 && commandTimeoutMs > 0 && options.client === undefined && waitOutlasts) {
    // A WAIT cut off by the client after the mail was committed would turn an accepted message into a
    // 451, and the sender's retry into a duplicate. (WAIT with timeout 0 blocks without limit.)
    throw new Error(
      `redis store: option "${nameOf("waitTimeoutMs")}" must be at least 1 and below ` +
        `"${nameOf("commandTimeoutMs")}" (${commandTimeoutMs}) when "${nameOf("waitReplicas")}" is set`,
    );
  }
  return {
    url: stringOption(nameOf("url"), options.url) ?? DEFAULT_URL,
    clusterNodes,
    prefix,
    chunkBytes: integerOption(nameOf("chunkBytes"), options.chunkBytes, 1, MAX_CHUNK) ?? 256 * 1024,
    connectionName: stringOption(nameOf("connectionName"), options.connectionName),
    connectTimeoutMs: integerOption(nameOf("connectTimeoutMs"), options.connectTimeoutMs, 0) ?? 10_000,
    commandTimeoutMs,
    waitReplicas,
    waitTimeoutMs,
    stagingTtlMs: integerOption(nameOf("stagingTtlMs"), options.stagingTtlMs, 1_000) ?? 15 * 60_000,
  };
}

class RedisStore implements Store {
  readonly kind = "redis";
  readonly capabilities = { sharedAcrossProcesses: true, boundedMemory: true } as const;
  readonly directory: Directory;
  readonly queue: Queue;
  private readonly dirKeys: DirectoryKeys;
  private closed = false;

  constructor(
    private readonly ctx: Context,
    private readonly owned: boolean,
    private readonly unwatch: () => void,
    private readonly onClose: () => void,
  ) {
    this.dirKeys = new DirectoryKeys(ctx.prefix);
    this.directory = new RedisDirectory(ctx, this.dirKeys);
    this.queue = new RedisQueue(ctx);
  }

  mailbox(id: MailboxId): Mailbox {
    assertMailboxId(id);
    return new RedisMailbox(this.ctx, this.dirKeys, new MailboxKeys(this.ctx.prefix, id), id);
  }

  /**
   * One staged copy per mailbox (they live under different hash tags), filled from a single pass over
   * the source, then committed one after the other. If a commit fails, the copies committed so far are
   * taken back. All or none, except when this process dies between two commits: then the earlier
   * copies stay (the sender, lacking a 250, retries, and those recipients get the message twice).
   */
  async deliver(
    mailboxes: readonly MailboxId[],
    source: AsyncIterable<Uint8Array>,
    options: DeliverOptions = {},
  ): Promise<readonly Delivered[]> {
    for (const id of mailboxes) assertMailboxId(id);
    const guarded = guardAppendSource(source, options);
    if (mailboxes.length === 0) {
      await countBytes(guarded);
      return [];
    }
    const receivedAt = options.receivedAt ?? Date.now();
    const targets = mailboxes.map((id) => ({ id, staging: new MailboxStaging(this.ctx, new MailboxKeys(this.ctx.prefix, id)) }));
    const done: Array<{ delivered: Delivered; keys: MailboxKeys }> = [];
    try {
      const { size, whole } = await stageAll(
        guarded,
        targets.map((t) => t.staging),
        this.ctx.chunkBytes,
      );
      // Sent together, answered in one round trip: the register and a UID for every copy.
      const [, ...uids] = await Promise.all([
        call(this.ctx, "register mailboxes", () => this.ctx.client.sadd(this.dirKeys.mailboxes, ...mailboxes)),
        ...targets.map((t) => allocateUid(this.ctx, t.staging.keys)),
      ]);
      for (const [i, { id, staging }] of targets.entries()) {
        const message = await commit(this.ctx, id, staging, { allocated: uids[i], size, whole, receivedAt, retrievedAt: null });
        done.push({ delivered: { mailbox: id, message }, keys: staging.keys });
      }
    } catch (error) {
      await Promise.all(targets.map((t) => t.staging.discard()));
      for (const { delivered, keys } of done) {
        try {
          await uncommit(this.ctx, keys, delivered.message.uid);
        } catch (rollbackError) {
          this.ctx.logger.error(
            { mailbox: delivered.mailbox, uid: delivered.message.uid, error: String(rollbackError) },
            "redis store: could not roll back a copy of a failed delivery; it stays in the mailbox",
          );
        }
      }
      throw error;
    }
    await afterDurableWrite(this.ctx, "delivery");
    return done.map((d) => d.delivered);
  }

  async listMailboxes(): Promise<readonly MailboxId[]> {
    return (await call(this.ctx, "list mailboxes", () => this.ctx.client.smembers(this.dirKeys.mailboxes))).sort();
  }

  async ping(): Promise<void> {
    try {
      await call(this.ctx, "ping", () => this.ctx.client.ping());
    } catch (error) {
      const mapped = toStoreError(error, "ping");
      throw mapped.code === "unavailable" ? mapped : new StoreError("unavailable", mapped.message, { cause: error });
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
    if (!this.owned) {
      this.unwatch();
      return;
    }
    try {
      await this.ctx.client.quit();
    } catch {
      this.ctx.client.disconnect();
    }
    // The error listener stays on our own (now closed) client: a late 'error' must not go unhandled.
  }
}

/**
 * Opens a store on Redis. Waits for the first connection (up to `connectTimeoutMs`) and fails with
 * "unavailable" if Redis cannot be reached by then.
 */
export async function createRedisStore(options: RedisStoreOptions = {}): Promise<Store> {
  const settings = resolveOptions(options);
  const logger = (options.logger ?? silentLogger).child({ store: "redis" });
  const owned = options.client === undefined;
  const client =
    options.client ??
    (settings.clusterNodes === undefined
      ? createClient(settings.url, settings.connectionName, settings.commandTimeoutMs)
      : createCluster(settings.clusterNodes, options.url, settings.connectionName, settings.commandTimeoutMs));
  const unwatch = watchConnection(client, logger);
  try {
    await waitReady(client, settings.connectTimeoutMs);
  } catch (error) {
    // Our own client keeps its error listener: a late 'error' from the dying socket must stay handled.
    if (owned) client.disconnect();
    else unwatch();
    throw error;
  }
  let closed = false;
  const ctx: Context = {
    client,
    prefix: settings.prefix,
    chunkBytes: settings.chunkBytes,
    stagingTtlMs: settings.stagingTtlMs,
    waitReplicas: settings.waitReplicas,
    waitTimeoutMs: settings.waitTimeoutMs,
    logger,
    isClosed: () => closed,
    script: defineScripts(client),
  };
  await checkDurability(client, logger, settings.waitReplicas);
  return new RedisStore(ctx, owned, unwatch, () => {
    closed = true;
  });
}
