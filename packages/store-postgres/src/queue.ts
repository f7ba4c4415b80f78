import {
  StoreError,
  compareAge,
  compareDue,
  guardAppendSource,
  mergeRecipients,
  newQueueId,
  parseProcessStamp,
  processHasEnded,
  processStamp,
  type ClaimOptions,
  type EnqueueOptions,
  type Queue,
  type QueueClaim,
  type QueueItem,
  type QueueRecipient,
  type RescheduleOptions,
  type RetryOptions,
  type RetryOutcome,
} from "@mailroom/store";
import type pg from "pg";
import type { Db } from "./db.js";
import { readHead } from "./delivery.js";
import { dropStaged, publishBody, readBody, stageBody, type MessageSql } from "./messages.js";
import { msToTs, tsToMs } from "./schema.js";

/**
 * The outbound queue: one row per item in `queue_items` (migration 2), its octets in the same
 * bodies/body_chunks tables as mailbox messages. A claim is three columns on the row (token, expiry by
 * the database clock, ttl); claiming picks due rows with `FOR UPDATE SKIP LOCKED`, so two servers
 * claiming at once walk past each other's rows instead of waiting or double-claiming, and every change
 * made under a claim matches the token and a live expiry in the same statement or transaction.
 */

const COLUMNS = (q: string): string => `
  ${q}.id, ${q}.sender, ${q}.recipients, ${q}.meta, ${q}.size::float8 AS size, ${q}.attempts, ${q}.last_error, ${q}.state,
  ${tsToMs(`${q}.created_at`)} AS created_at, ${tsToMs(`${q}.next_attempt_at`)} AS next_attempt_at`;

export function queueSql(s: string) {
  return {
    insert: `
      INSERT INTO ${s}.queue_items (id, sender, recipients, meta, body_id, size, created_at, next_attempt_at, state)
      VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, ${msToTs("$7")}, ${msToTs("$8")}, 'queued')
      RETURNING ${COLUMNS(`${s}.queue_items`)}`,
    // A body that fits in one chunk goes in with its row in one statement, committed synchronously
    // (as storeWhole in delivery.ts does for mail): no staged row, one round trip. Empty: no chunk.
    insertWhole: `
      WITH strict AS (SELECT set_config('synchronous_commit', 'on', true)),
      body AS (INSERT INTO ${s}.bodies (size, refs) SELECT $6::bigint, 1 FROM strict RETURNING id),
      chunk AS (INSERT INTO ${s}.body_chunks (body_id, seq, data) SELECT id, 0, $5::bytea FROM body WHERE $6::bigint > 0)
      INSERT INTO ${s}.queue_items (id, sender, recipients, meta, body_id, size, created_at, next_attempt_at, state)
      SELECT $1, $2, $3::jsonb, $4::jsonb, body.id, $6::bigint, ${msToTs("$7")}, ${msToTs("$8")}, 'queued' FROM body
      RETURNING ${COLUMNS(`${s}.queue_items`)}`,
    list: `SELECT ${COLUMNS("q")} FROM ${s}.queue_items q ORDER BY q.created_at, q.id`,
    get: `SELECT ${COLUMNS("q")} FROM ${s}.queue_items q WHERE q.id = $1`,
    locate: `SELECT body_id::text AS body_id, size::float8 AS size FROM ${s}.queue_items WHERE id = $1`,
    // The CTE locks the rows it picks and skips rows other claimers hold locked right now; rows whose
    // claim another transaction committed meanwhile are re-checked against the WHERE and dropped.
    claim: `
      WITH due AS (
        SELECT id FROM ${s}.queue_items
        WHERE state = 'queued' AND next_attempt_at <= ${msToTs("$1")}
          AND (claim_expires_at IS NULL OR claim_expires_at <= now() OR claim_token = ANY($5::text[]))
        ORDER BY next_attempt_at, created_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
      )
      UPDATE ${s}.queue_items q
      SET claim_token = gen_random_uuid()::text, claim_holder = $3,
          claim_expires_at = now() + $4::bigint * interval '1 millisecond', claim_ttl_ms = $4, claim_owner = $6
      FROM due WHERE q.id = due.id
      RETURNING ${COLUMNS("q")}, q.claim_token, ${tsToMs("q.claim_expires_at")} AS claim_expires_at`,
    // Claims whose holder may have ended; the claimer judges them (processHasEnded) before claiming.
    owners: `
      SELECT claim_token, claim_owner FROM ${s}.queue_items
      WHERE claim_owner IS NOT NULL AND claim_expires_at > now()`,
    delivering: `SELECT id, claim_owner FROM ${s}.queue_items WHERE claim_expires_at > now()`,
    renew: `
      UPDATE ${s}.queue_items q
      SET claim_expires_at = now() + COALESCE($3::bigint, q.claim_ttl_ms) * interval '1 millisecond'
      WHERE q.id = $1 AND q.claim_token = $2 AND q.claim_expires_at > now()
      RETURNING ${COLUMNS("q")}, q.claim_ttl_ms::float8 AS claim_ttl_ms, ${tsToMs("q.claim_expires_at")} AS claim_expires_at`,
    fence: `
      SELECT ${COLUMNS("q")} FROM ${s}.queue_items q
      WHERE q.id = $1 AND q.claim_token = $2 AND q.claim_expires_at > now() FOR UPDATE`,
    lock: `SELECT ${COLUMNS("q")} FROM ${s}.queue_items q WHERE q.id = $1 FOR UPDATE`,
    // What retry needs to know besides the item: whether a live claim holds it, and whose.
    lockClaimed: `
      SELECT ${COLUMNS("q")}, COALESCE(q.claim_expires_at > now(), false) AS claim_live, q.claim_owner
      FROM ${s}.queue_items q WHERE q.id = $1 FOR UPDATE`,
    update: `
      UPDATE ${s}.queue_items
      SET attempts = $2, next_attempt_at = ${msToTs("$3")}, last_error = $4, recipients = $5::jsonb, state = $6,
          claim_token = NULL, claim_holder = NULL, claim_expires_at = NULL, claim_ttl_ms = NULL, claim_owner = NULL
      WHERE id = $1`,
    finish: `
      DELETE FROM ${s}.queue_items
      WHERE id = $1 AND claim_token = $2 AND claim_expires_at > now()
      RETURNING body_id`,
    remove: `DELETE FROM ${s}.queue_items WHERE id = $1 RETURNING body_id`,
    dropBody: `DELETE FROM ${s}.bodies WHERE id = $1`,
  };
}

export type QueueSql = ReturnType<typeof queueSql>;

interface ItemRow {
  id: string;
  sender: string;
  recipients: QueueRecipient[];
  meta: Record<string, string>;
  size: number;
  attempts: number;
  last_error: string | null;
  state: "queued" | "dead";
  created_at: number;
  next_attempt_at: number;
}

function toItem(row: ItemRow): QueueItem {
  return {
    id: row.id,
    sender: row.sender,
    recipients: row.recipients,
    size: row.size,
    createdAt: row.created_at,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    lastError: row.last_error,
    state: row.state,
    meta: row.meta,
  };
}

/**
 * NUL, which PostgreSQL's text and jsonb refuse (22021, 22P05), and unpaired surrogates, which jsonb
 * refuses as JSON escapes. Text column parameters lose unpaired surrogates on their way to UTF-8
 * anyway (as U+FFFD), so only jsonb needs the second part.
 */
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * Text from outside (a remote server's reply in `last_error` and the recipients' diagnostics, the
 * envelope) as PostgreSQL takes it: what it would refuse becomes U+FFFD. Refused, it would fail the
 * whole write as "permanent"; a reschedule that never sticks leaves the item to be claimed, tried
 * and bounced again after every claim, forever.
 */
export function storableText(text: string): string {
  return text.replace(UNSTORABLE, "\uFFFD");
}

function storableJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "string" ? storableText(v) : v));
}

/** Meta keys are free text too; JSON.stringify's replacer sees only the values. */
function storableMeta(meta: Readonly<Record<string, string>> | undefined): string {
  return storableJson(Object.fromEntries(Object.entries(meta ?? {}).map(([key, value]) => [storableText(key), value])));
}

const lost = (id: string): StoreError =>
  new StoreError("lease-lost", `postgres: claim on queue item ${id} expired or was taken over`);
const missing = (id: string): StoreError => new StoreError("not-found", `postgres: no queue item ${JSON.stringify(id)}`);

/** The columns a reschedule, dead-letter or retry rewrites. */
type ItemChange = Pick<QueueItem, "attempts" | "nextAttemptAt" | "lastError" | "recipients" | "state">;

export class PostgresQueue implements Queue {
  constructor(
    private readonly db: Db,
    private readonly sql: QueueSql,
    private readonly messages: MessageSql,
  ) {}

  async enqueue(
    envelope: { readonly sender: string; readonly recipients: readonly string[]; readonly meta?: Readonly<Record<string, string>> },
    source: AsyncIterable<Uint8Array>,
    options: EnqueueOptions = {},
  ): Promise<QueueItem> {
    const now = Date.now();
    const recipients: QueueRecipient[] = envelope.recipients.map((address) => ({ address, status: "pending" }));
    const row = (bodyParam: unknown, size: number): unknown[] => [
      newQueueId(now),
      storableText(envelope.sender),
      storableJson(recipients),
      storableMeta(envelope.meta),
      bodyParam,
      size,
      String(now),
      String(Math.round(options.notBefore ?? now)),
    ];
    const head = await readHead(guardAppendSource(source, options), options.signal);
    if (head.whole !== null) {
      const inserted = await this.db.query<ItemRow>("enqueue", this.sql.insertWhole, row(head.whole, head.whole.length));
      return toItem(inserted.rows[0]!);
    }
    // Bigger: staged outside any transaction (see stageBody), so a slow submission holds no connection.
    const body = await stageBody(this.db, this.messages, head.rest, options.signal);
    try {
      return await this.db.transaction("enqueue", async (client) => {
        await publishBody(client, this.messages, body, 1);
        const inserted = await client.query<ItemRow>(this.sql.insert, row(body.bodyId, body.size));
        return toItem(inserted.rows[0]!);
      });
    } catch (error) {
      await dropStaged(this.db, this.messages, body.bodyId);
      throw error;
    }
  }

  async claim(options: ClaimOptions): Promise<readonly QueueClaim[]> {
    const limit = Math.max(0, Math.floor(options.limit ?? 1));
    if (limit === 0) return [];
    const ttl = Math.max(0, Math.ceil(options.ttlMs));
    const stamp = processStamp();
    // A claim whose process has ended on this machine (a killed server's) is taken like an expired one.
    const ended = stamp
      ? (await this.db.query<{ claim_token: string; claim_owner: string }>("read queue claim owners", this.sql.owners, [])).rows
          .filter((row) => processHasEnded(parseProcessStamp(row.claim_owner)))
          .map((row) => row.claim_token)
      : [];
    const result = await this.db.transaction("claim queue items", (client) =>
      client.query<ItemRow & { claim_token: string; claim_expires_at: number }>(this.sql.claim, [
        String(Math.round(options.now ?? Date.now())),
        limit,
        options.holder,
        ttl,
        ended,
        stamp ? JSON.stringify(stamp) : null,
      ]),
    );
    return result.rows
      .map((row) => ({ item: toItem(row), token: row.claim_token, expiresAt: row.claim_expires_at, ttlMs: ttl }))
      .sort((a, b) => compareDue(a.item, b.item));
  }

  async renew(claim: QueueClaim): Promise<QueueClaim> {
    const ttl = claim.ttlMs === undefined ? null : Math.max(0, Math.ceil(claim.ttlMs));
    const result = await this.db.query<ItemRow & { claim_ttl_ms: number; claim_expires_at: number }>(
      "renew queue claim",
      this.sql.renew,
      [claim.item.id, claim.token, ttl],
    );
    const row = result.rows[0];
    if (!row) throw lost(claim.item.id);
    return { item: toItem(row), token: claim.token, expiresAt: row.claim_expires_at, ttlMs: row.claim_ttl_ms };
  }

  async readMessage(id: string): Promise<AsyncIterable<Uint8Array>> {
    const result = await this.db.query<{ body_id: string; size: number }>("read queued message", this.sql.locate, [id]);
    const row = result.rows[0];
    if (!row) throw missing(id);
    return readBody(this.db, this.messages, row.body_id, row.size);
  }

  async finish(claim: QueueClaim): Promise<void> {
    await this.db.transaction("finish queue item", async (client) => {
      const gone = await client.query<{ body_id: string }>(this.sql.finish, [claim.item.id, claim.token]);
      const row = gone.rows[0];
      if (!row) throw lost(claim.item.id);
      await client.query(this.sql.dropBody, [row.body_id]);
    });
  }

  /** Inside one transaction: the row under a live claim (or any row for operators), changed by `change`. */
  private async change(
    what: string,
    id: string,
    claim: QueueClaim | null,
    change: (item: QueueItem) => ItemChange,
  ): Promise<void> {
    await this.db.transaction(what, async (client: pg.PoolClient) => {
      const found = claim
        ? await client.query<ItemRow>(this.sql.fence, [id, claim.token])
        : await client.query<ItemRow>(this.sql.lock, [id]);
      const row = found.rows[0];
      if (!row) throw claim ? lost(id) : missing(id);
      await this.write(client, id, change(toItem(row)));
    });
  }

  /** Replaces the item's changing columns and ends any claim on it. */
  private async write(client: pg.PoolClient, id: string, next: ItemChange): Promise<void> {
    await client.query(this.sql.update, [
      id,
      next.attempts,
      String(Math.round(next.nextAttemptAt)),
      next.lastError === null ? null : storableText(next.lastError),
      storableJson(next.recipients),
      next.state,
    ]);
  }

  reschedule(claim: QueueClaim, options: RescheduleOptions): Promise<void> {
    return this.change("reschedule queue item", claim.item.id, claim, (item) => ({
      attempts: item.attempts + 1,
      nextAttemptAt: options.nextAttemptAt,
      lastError: options.error,
      recipients: mergeRecipients(item.recipients, options.recipients),
      state: "queued",
    }));
  }

  deadLetter(claim: QueueClaim, options: { readonly error: string; readonly recipients?: readonly QueueRecipient[] }): Promise<void> {
    return this.change("dead-letter queue item", claim.item.id, claim, (item) => ({
      attempts: item.attempts + 1,
      nextAttemptAt: item.nextAttemptAt,
      lastError: options.error,
      recipients: mergeRecipients(item.recipients, options.recipients),
      state: "dead",
    }));
  }

  async list(): Promise<readonly QueueItem[]> {
    const result = await this.db.query<ItemRow>("list queue", this.sql.list);
    return result.rows.map(toItem).sort(compareAge);
  }

  async get(id: string): Promise<QueueItem | null> {
    const result = await this.db.query<ItemRow>("get queue item", this.sql.get, [id]);
    const row = result.rows[0];
    return row ? toItem(row) : null;
  }

  async delivering(): Promise<readonly string[]> {
    const result = await this.db.query<{ id: string; claim_owner: string | null }>("list queue deliveries", this.sql.delivering);
    return result.rows.filter((row) => !processHasEnded(parseProcessStamp(row.claim_owner))).map((row) => row.id);
  }

  retry(id: string, options: RetryOptions = {}): Promise<RetryOutcome> {
    const now = Date.now();
    return this.db.transaction("retry queue item", async (client: pg.PoolClient) => {
      const found = await client.query<ItemRow & { claim_live: boolean; claim_owner: string | null }>(this.sql.lockClaimed, [id]);
      const row = found.rows[0];
      if (!row) throw missing(id);
      // A claim whose process has ended is no delivery in progress (see claim).
      if (row.claim_live && !options.breakClaim && !processHasEnded(parseProcessStamp(row.claim_owner))) return "in-delivery";
      const item = toItem(row);
      await this.write(client, id, { ...item, nextAttemptAt: now, state: "queued" });
      return "retried";
    });
  }

  async remove(id: string): Promise<void> {
    await this.db.transaction("remove queue item", async (client) => {
      const gone = await client.query<{ body_id: string }>(this.sql.remove, [id]);
      const row = gone.rows[0];
      if (!row) throw missing(id);
      await client.query(this.sql.dropBody, [row.body_id]);
    });
  }
}
