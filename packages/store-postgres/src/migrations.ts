import type pg from "pg";
import { StoreError } from "@mailroom/store";
import { quoteIdent } from "./schema.js";

/**
 * Versioned schema changes. A migration is never edited once released: changes come as a new entry.
 * `sql` receives the quoted schema name, the only identifier we ever splice into SQL text.
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: (s: string) => string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "initial",
    sql: (s) => `
      CREATE TABLE ${s}.domains (
        name text PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE TABLE ${s}.accounts (
        address text PRIMARY KEY,
        domain text NOT NULL REFERENCES ${s}.domains (name),
        mailbox text NOT NULL,
        password_hash text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX accounts_domain ON ${s}.accounts (domain);
      CREATE TABLE ${s}.aliases (
        seq bigint GENERATED ALWAYS AS IDENTITY,
        source text NOT NULL,
        target text NOT NULL,
        domain text NOT NULL REFERENCES ${s}.domains (name),
        PRIMARY KEY (source, target)
      );
      CREATE INDEX aliases_domain ON ${s}.aliases (domain);

      -- next_uid only ever grows, so a generated UID is never handed out twice, also after deletes.
      CREATE TABLE ${s}.mailboxes (
        id text PRIMARY KEY,
        next_uid bigint NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now()
      );

      -- One body per delivered message, shared by every mailbox it was delivered to; refs counts them.
      CREATE TABLE ${s}.bodies (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        size bigint NOT NULL DEFAULT 0,
        refs integer NOT NULL DEFAULT 0
      );
      CREATE TABLE ${s}.body_chunks (
        body_id bigint NOT NULL REFERENCES ${s}.bodies (id) ON DELETE CASCADE,
        seq integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (body_id, seq)
      );
      -- Uncompressed: mail is mostly base64 attachments that barely compress, and substring() on an
      -- uncompressed value reads only the TOAST pieces it needs (reads fetch chunks in slices).
      ALTER TABLE ${s}.body_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

      -- seq is the arrival order: taken when the row is inserted (see delivery.ts for what that means).
      CREATE TABLE ${s}.messages (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        mailbox text NOT NULL REFERENCES ${s}.mailboxes (id),
        uid text NOT NULL,
        body_id bigint NOT NULL REFERENCES ${s}.bodies (id),
        size bigint NOT NULL,
        received_at timestamptz NOT NULL,
        retrieved_at timestamptz,
        CONSTRAINT messages_mailbox_uid UNIQUE (mailbox, uid)
      );
      CREATE INDEX messages_body ON ${s}.messages (body_id);

      CREATE TABLE ${s}.leases (
        mailbox text PRIMARY KEY,
        token text NOT NULL,
        holder text NOT NULL,
        acquired_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: "outbound queue",
    sql: (s) => `
      -- Mail waiting for delivery to other domains. The octets live in bodies/body_chunks (refs = 1),
      -- like a message delivered to one mailbox. The claim columns are all NULL or all set.
      CREATE TABLE ${s}.queue_items (
        id text PRIMARY KEY,
        sender text NOT NULL,
        recipients jsonb NOT NULL,
        meta jsonb NOT NULL DEFAULT '{}'::jsonb,
        body_id bigint NOT NULL REFERENCES ${s}.bodies (id),
        size bigint NOT NULL,
        created_at timestamptz NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at timestamptz NOT NULL,
        last_error text,
        state text NOT NULL CHECK (state IN ('queued', 'dead')),
        claim_token text,
        claim_holder text,
        claim_expires_at timestamptz,
        claim_ttl_ms bigint
      );
      -- What claim scans: queued rows in due order.
      CREATE INDEX queue_items_due ON ${s}.queue_items (next_attempt_at, created_at, id) WHERE state = 'queued';
      CREATE INDEX queue_items_age ON ${s}.queue_items (created_at, id);
    `,
  },
  {
    version: 3,
    name: "lease and claim owners",
    sql: (s) => `
      -- The holding process as JSON (boot id, pid namespace, pid, start time; see @mailroom/store's
      -- processStamp), so that a server on the same machine can take over the leases and queue claims
      -- of a killed one at once. NULL where the holder could not tell (no /proc) or wrote it before
      -- this version.
      ALTER TABLE ${s}.leases ADD COLUMN owner text;
      ALTER TABLE ${s}.queue_items ADD COLUMN claim_owner text;
      -- What a claim reads first to find claims of ended processes: only the rows claimed right now.
      CREATE INDEX queue_items_claimed ON ${s}.queue_items (id) WHERE claim_owner IS NOT NULL;
    `,
  },
  {
    version: 4,
    name: "staged bodies",
    sql: (s) => `
      -- Set while a body's octets are still arriving: they are written in short statements of their
      -- own, so no pooled connection waits on a slow sender, and no message or queue row references
      -- the body until the transaction that publishes it (and clears this) commits. staged_by names
      -- the staging process (like leases.owner), so a restarted server sweeps what a killed one left
      -- at once; other leftovers are swept after some hours (see messages.ts). Older releases leave
      -- both NULL.
      ALTER TABLE ${s}.bodies ADD COLUMN staged_at timestamptz, ADD COLUMN staged_by text;
      CREATE INDEX bodies_staged ON ${s}.bodies (staged_at) WHERE staged_at IS NOT NULL;
    `,
  },
];

export const LATEST_VERSION = MIGRATIONS.reduce((max, m) => Math.max(max, m.version), 0);

export interface MigrationResult {
  /** Versions applied by this call, in order (empty when the schema was up to date). */
  readonly applied: readonly number[];
  /** The schema version after this call. */
  readonly version: number;
}

/**
 * The advisory lock key: one per schema, so two schemas in one database migrate independently.
 * hashtextextended is computed by the server, so every client derives the same key.
 */
const LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7193))";

/**
 * Applies pending migrations, each in its own transaction. Every transaction first takes a
 * transaction-scoped advisory lock, so servers starting at the same moment queue up instead of racing:
 * the second one finds the work done and applies nothing. The lock ends with the transaction, so a
 * crashed migrator never leaves it behind.
 */
export async function runMigrations(pool: pg.Pool, schema: string, lockWait: LockWait = DEFAULT_LOCK_WAIT): Promise<MigrationResult> {
  const s = quoteIdent(schema);
  const applied: number[] = [];
  let version = 0;
  for (const migration of [...MIGRATIONS].sort((a, b) => a.version - b.version)) {
    for (let attempt = 1; ; attempt++) {
      try {
        const done = await applyOne(pool, schema, s, migration, lockWait.timeoutMs);
        version = done.version;
        if (done.applied) applied.push(migration.version);
        break;
      } catch (error) {
        if ((error as { code?: unknown }).code !== LOCK_NOT_AVAILABLE) throw error;
        if (attempt >= lockWait.attempts) {
          throw new StoreError(
            "unavailable",
            `postgres: migration ${migration.version} (${migration.name}) could not lock its tables in ${lockWait.attempts} tries: ` +
              "transactions of running servers hold them (an older release holds one for the whole DATA of a big message); " +
              "run `mailroom migrate` when no older server is taking mail",
            { cause: error },
          );
        }
        await new Promise((resolve) => setTimeout(resolve, lockWait.pauseMs));
      }
    }
  }
  return { applied, version };
}

/**
 * How a migration waits for the locks its DDL needs. Short tries: while an ALTER TABLE waits for its
 * lock, every other statement on that table queues behind it, so a long wait would stall the running
 * servers; between tries they go on.
 */
export interface LockWait {
  readonly timeoutMs: number;
  readonly attempts: number;
  readonly pauseMs: number;
}

const DEFAULT_LOCK_WAIT: LockWait = { timeoutMs: 2_000, attempts: 30, pauseMs: 1_000 };
/** SQLSTATE lock_not_available, what lock_timeout raises. */
const LOCK_NOT_AVAILABLE = "55P03";

/** One migration in its own transaction, under the advisory lock; nothing if it is applied already. */
async function applyOne(
  pool: pg.Pool,
  schema: string,
  s: string,
  migration: (typeof MIGRATIONS)[number],
  lockTimeoutMs: number,
): Promise<{ version: number; applied: boolean }> {
  const client = await pool.connect();
  let broken: unknown;
  const onError = (error: unknown): void => {
    broken = error;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    await client.query(LOCK_SQL, [`mailroom:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
    await client.query(
      `CREATE TABLE IF NOT EXISTS ${s}.migrations (
         version integer PRIMARY KEY,
         name text NOT NULL,
         applied_at timestamptz NOT NULL DEFAULT now()
       )`,
    );
    const current = await client.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${s}.migrations`);
    const version = current.rows[0]?.v ?? 0;
    if (version >= migration.version) {
      await client.query("COMMIT");
      return { version, applied: false };
    }
    await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(lockTimeoutMs))}`);
    await client.query(migration.sql(s));
    await client.query(`INSERT INTO ${s}.migrations (version, name) VALUES ($1, $2)`, [migration.version, migration.name]);
    await client.query("COMMIT");
    return { version: migration.version, applied: true };
  } catch (error) {
    await client.query("ROLLBACK").catch((rollbackError: unknown) => {
      broken ??= rollbackError;
    });
    throw error;
  } finally {
    client.off("error", onError);
    client.release(broken instanceof Error ? broken : broken !== undefined);
  }
}

/** The version recorded in the schema, or 0 when the schema has never been migrated. */
export async function schemaVersion(pool: pg.Pool, schema: string): Promise<number> {
  const exists = await pool.query<{ t: string | null }>("SELECT to_regclass($1) AS t", [
    `${quoteIdent(schema)}.migrations`,
  ]);
  if (!exists.rows[0]?.t) return 0;
  const result = await pool.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${quoteIdent(schema)}.migrations`);
  return result.rows[0]?.v ?? 0;
}
