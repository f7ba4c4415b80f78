import pg from "pg";
import {
  StoreError,
  assertMailboxId,
  guardAppendSource,
  silentLogger,
  takeTop,
  type AppendOptions,
  type Delivered,
  type DeliverOptions,
  type Directory,
  type Lease,
  type LeaseOptions,
  type Logger,
  type Mailbox,
  type MailboxId,
  type MessageInfo,
  type Queue,
  type ReadOptions,
  type Store,
  type Uid,
} from "@mailroom/store";
import { createDb, type Db } from "./db.js";
import { PostgresDirectory } from "./directory.js";
import { toStoreError } from "./errors.js";
import { acquireLease, checkFence, leaseSql, type LeaseSql } from "./lease.js";
import { deliverySql, storeNewMessage, type DeliverySql } from "./delivery.js";
import { appendMessage, messageSql, readMessage, sweepStaged, toInfo, type MessageSql } from "./messages.js";
import { LATEST_VERSION, runMigrations, schemaVersion, type MigrationResult } from "./migrations.js";
import { PostgresQueue, queueSql } from "./queue.js";
import { UidBlocks } from "./uids.js";
import { DEFAULT_SCHEMA, assertSchemaName, quoteIdent } from "./schema.js";

export interface PostgresSslOptions {
  /** PEM text of the CA that signed the server's certificate. */
  readonly ca?: string;
  /** Default true. Turn off only for a test server with a self-signed certificate. */
  readonly rejectUnauthorized?: boolean;
}

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:5432/database`. Either this or `pool`. */
  readonly url?: string;
  /** An existing pool to use instead of `url`. The caller keeps owning it: `close()` does not end it. */
  readonly pool?: pg.Pool;
  /** The PostgreSQL schema that holds every table. Default "mailroom". */
  readonly schema?: string;
  /** Connections in the pool. A statement holds one while it runs; a message still arriving holds none. Default 10. */
  readonly poolSize?: number;
  /** Server-side limit for one statement; 0 turns it off. Default 30000. */
  readonly statementTimeoutMs?: number;
  /**
   * Client-side limit for one statement: how long to wait for the database's answer before giving up
   * with "unavailable" and dropping the connection. It catches what `statementTimeoutMs` cannot, a
   * database that stopped answering (frozen, or cut off without a reset). 0 turns it off. Default
   * `statementTimeoutMs` + 5000, or off when that is 0.
   */
  readonly queryTimeoutMs?: number;
  /** How long to wait for a connection (new or from a busy pool). Default 10000. */
  readonly connectTimeoutMs?: number;
  readonly ssl?: boolean | PostgresSslOptions;
  /** Create or upgrade the schema on open. Default true; false only checks that it is current. */
  readonly migrate?: boolean;
  /** Shown in pg_stat_activity. Default "mailroom". */
  readonly applicationName?: string;
  /**
   * Run statements as named prepared statements, parsed and planned once per connection. Default
   * true; set false behind a transaction-mode pooler that cannot keep them (PgBouncer before 1.21,
   * or without `max_prepared_statements`).
   */
  readonly preparedStatements?: boolean;
  readonly logger?: Logger;
}

const DEFAULTS = { poolSize: 10, statementTimeoutMs: 30_000, connectTimeoutMs: 10_000 };

/** How far the client-side query timeout lies above the server's statement timeout by default. */
const QUERY_TIMEOUT_MARGIN_MS = 5000;

/** How often a running store sweeps staged bodies left behind (see sweepStaged). */
const SWEEP_INTERVAL_MS = 60 * 60 * 1000;

class PostgresMailbox implements Mailbox {
  constructor(
    private readonly db: Db,
    private readonly sql: MessageSql,
    private readonly dsql: DeliverySql,
    private readonly uidBlocks: UidBlocks,
    private readonly leases: LeaseSql,
    readonly id: MailboxId,
  ) {}

  append(source: AsyncIterable<Uint8Array>, options: AppendOptions = {}): Promise<MessageInfo> {
    return appendMessage(this.db, this.sql, this.dsql, this.uidBlocks, this.id, source, options);
  }

  async list(): Promise<readonly MessageInfo[]> {
    const result = await this.db.query<Parameters<typeof toInfo>[0]>("list messages", this.sql.list, [this.id]);
    return result.rows.map(toInfo);
  }

  async read(uid: Uid, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const whole = await readMessage(this.db, this.sql, this.id, uid);
    if (whole === null) throw new StoreError("not-found", `postgres: no message ${uid} in ${this.id}`);
    return options.bodyLines === undefined ? whole : takeTop(whole, options.bodyLines);
  }

  expunge(uids: readonly Uid[], lease: Lease): Promise<number> {
    return this.db.transaction(`expunge from ${this.id}`, async (client) => {
      await checkFence(client, this.leases, this.id, lease);
      if (uids.length === 0) return 0;
      await client.query(this.sql.lockBodies, [this.id, [...uids]]);
      const result = await client.query<{ id: string; refs: number; n: number }>(this.sql.expunge, [this.id, [...uids]]);
      let removed = 0;
      const unused: string[] = [];
      for (const row of result.rows) {
        removed += row.n;
        if (row.refs <= 0) unused.push(row.id);
      }
      if (unused.length > 0) await client.query(this.sql.dropBodies, [unused]);
      return removed;
    });
  }

  async markRetrieved(uids: readonly Uid[], lease: Lease): Promise<void> {
    await this.db.transaction(`mark retrieved in ${this.id}`, async (client) => {
      await checkFence(client, this.leases, this.id, lease);
      if (uids.length > 0) await client.query(this.sql.markRetrieved, [this.id, [...uids]]);
    });
  }

  acquireLease(options: LeaseOptions): Promise<Lease> {
    return acquireLease(this.db, this.leases, this.id, options);
  }

  async uidMark(): Promise<string | null> {
    const result = await this.db.query<{ next: string }>("uid mark", this.sql.uidMark, [this.id]);
    const next = result.rows[0] === undefined ? 1n : BigInt(result.rows[0].next);
    return next > 1n ? `postgres:${next - 1n}` : null;
  }

  async skipUids(mark: string): Promise<void> {
    const last = /^postgres:([1-9][0-9]{0,17})$/.exec(mark);
    if (!last) return;
    await this.db.query("skip uids", this.sql.keepUid, [this.id, last[1]]);
    // UIDs this process took ahead may lie below the new counter.
    this.uidBlocks.forget([this.id]);
  }
}

class PostgresStore implements Store {
  readonly kind = "postgres";
  readonly capabilities = { sharedAcrossProcesses: true, boundedMemory: true };
  readonly directory: Directory;
  readonly queue: Queue;
  private readonly sql: MessageSql;
  private readonly dsql: DeliverySql;
  private readonly uidBlocks: UidBlocks;
  private readonly leases: LeaseSql;
  private closed = false;
  private readonly sweeper: ReturnType<typeof setInterval>;

  private readonly db: Db;

  constructor(
    pool: pg.Pool,
    logger: Logger,
    schema: string,
    private readonly onClose: () => Promise<void>,
    prepared: boolean,
  ) {
    this.db = createDb(pool, logger, () => this.closed, prepared);
    const s = quoteIdent(schema);
    this.sql = messageSql(s);
    this.dsql = deliverySql(s);
    this.uidBlocks = new UidBlocks(this.db, this.dsql);
    this.leases = leaseSql(s);
    this.directory = new PostgresDirectory(this.db, s);
    this.queue = new PostgresQueue(this.db, queueSql(s), this.sql);
    // A store that runs for months would otherwise keep what failed cleanups left until a restart.
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_INTERVAL_MS);
    this.sweeper.unref?.();
  }

  /** Removes staged bodies that a crash or a failed cleanup left behind; logs instead of throwing. */
  async sweep(): Promise<void> {
    try {
      const swept = await sweepStaged(this.db, this.sql);
      if (swept > 0) this.db.logger.info({ bodies: swept }, "postgres: swept abandoned message bodies");
    } catch (error) {
      this.db.logger.warn({ err: error instanceof Error ? error.message : String(error) }, "postgres: sweeping abandoned message bodies failed");
    }
  }

  mailbox(id: MailboxId): Mailbox {
    assertMailboxId(id);
    return new PostgresMailbox(this.db, this.sql, this.dsql, this.uidBlocks, this.leases, id);
  }

  async deliver(
    mailboxes: readonly MailboxId[],
    source: AsyncIterable<Uint8Array>,
    options: DeliverOptions = {},
  ): Promise<readonly Delivered[]> {
    for (const id of mailboxes) assertMailboxId(id);
    const guarded = guardAppendSource(source, options);
    if (mailboxes.length === 0) {
      // Nothing to store, but the size limit and abort still apply to what the sender sent.
      const iterator = guarded[Symbol.asyncIterator]();
      while (!(await iterator.next()).done);
      return [];
    }
    const infos = await storeNewMessage(this.db, this.sql, this.dsql, this.uidBlocks, mailboxes, guarded, options);
    return infos.map((message, i) => ({ mailbox: mailboxes[i]!, message }));
  }

  async listMailboxes(): Promise<readonly MailboxId[]> {
    const result = await this.db.query<{ id: string }>("list mailboxes", this.sql.listMailboxes);
    return result.rows.map((r) => r.id);
  }

  async ping(): Promise<void> {
    await this.db.query("ping", "SELECT 1");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    await this.onClose();
  }
}

function poolFor(options: PostgresStoreOptions): { pool: pg.Pool; owned: boolean } {
  if (options.pool) return { pool: options.pool, owned: false };
  if (options.url === undefined) throw new Error("postgres store: either `url` or `pool` is required");
  const ssl = options.ssl;
  const config: pg.PoolConfig = {
    connectionString: options.url,
    max: options.poolSize ?? DEFAULTS.poolSize,
    connectionTimeoutMillis: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    // Notices a silently dropped connection (a NAT or firewall timing out) instead of hanging on it.
    keepAlive: true,
    application_name: options.applicationName ?? "mailroom",
  };
  const timeout = options.statementTimeoutMs ?? DEFAULTS.statementTimeoutMs;
  if (timeout > 0) config.statement_timeout = timeout;
  // statement_timeout is enforced by the server, so it never fires when the server or the path to it
  // is gone; without this a call would wait for TCP to give up (about 15 minutes).
  const queryTimeout = options.queryTimeoutMs ?? (timeout > 0 ? timeout + QUERY_TIMEOUT_MARGIN_MS : 0);
  if (queryTimeout > 0) config.query_timeout = queryTimeout;
  if (ssl !== undefined && ssl !== false) {
    config.ssl =
      ssl === true
        ? true
        : {
            ...(ssl.ca === undefined ? {} : { ca: ssl.ca }),
            rejectUnauthorized: ssl.rejectUnauthorized ?? true,
          };
  }
  return { pool: new pg.Pool(config), owned: true };
}

/** Opens a pool (or uses the given one), attaches the error handler and runs what `migrate` asks. */
async function open(options: PostgresStoreOptions, migrateOnly: boolean) {
  const schema = options.schema ?? DEFAULT_SCHEMA;
  assertSchemaName(schema);
  const logger = options.logger ?? silentLogger;
  const { pool, owned } = poolFor(options);
  // An idle pooled connection that dies (database restart) is reported here; without a listener
  // Node would treat it as an unhandled 'error' event and exit. The pool drops the connection itself.
  const onPoolError = (error: Error): void => {
    logger.warn({ err: error.message }, "postgres: idle connection lost");
  };
  pool.on("error", onPoolError);
  const dispose = async (): Promise<void> => {
    if (owned) await pool.end();
    pool.off("error", onPoolError);
  };
  try {
    let result: MigrationResult | undefined;
    if (migrateOnly || options.migrate !== false) {
      result = await runMigrations(pool, schema);
      if (result.applied.length > 0) logger.info({ schema, applied: result.applied }, "postgres: schema migrated");
    } else {
      const version = await schemaVersion(pool, schema);
      if (version < LATEST_VERSION) {
        throw new StoreError(
          "permanent",
          `postgres: schema ${schema} is at version ${version}, this version needs ${LATEST_VERSION}: run \`mailroom migrate\``,
        );
      }
    }
    if (result && result.version > LATEST_VERSION) {
      logger.warn({ schema, version: result.version }, "postgres: schema is newer than this version of Mailroom");
    }
    return { pool, schema, logger, dispose, result };
  } catch (error) {
    await dispose().catch(() => undefined);
    throw toStoreError(error, `open schema ${schema}`);
  }
}

/**
 * Opens a store on PostgreSQL. The schema is created or upgraded first (unless `migrate: false`);
 * several processes may do this at once. Throws "unavailable" when the database cannot be reached.
 */
export async function createPostgresStore(options: PostgresStoreOptions): Promise<Store> {
  const { pool, schema, logger, dispose } = await open(options, false);
  const store = new PostgresStore(pool, logger, schema, dispose, options.preparedStatements ?? true);
  // What a crashed process was still receiving; its sender retries and nobody will publish it.
  await store.sweep();
  return store;
}

/** Creates or upgrades the schema and closes again: the `mailroom migrate` command. */
export async function migrate(options: PostgresStoreOptions): Promise<MigrationResult> {
  const { dispose, result } = await open(options, true);
  await dispose();
  return result ?? { applied: [], version: LATEST_VERSION };
}

