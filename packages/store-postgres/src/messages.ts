import {
  StoreError,
  assertUid,
  guardAppendSource,
  parseProcessStamp,
  processHasEnded,
  processStamp,
  type AppendOptions,
  type MailboxId,
  type MessageInfo,
  type Uid,
} from "@mailroom/store";
import { Buffer } from "node:buffer";
import type pg from "pg";
import { SourceFailure, nextFromSource, type Db } from "./db.js";
import { storeNewMessage, type DeliverySql } from "./delivery.js";
import type { UidBlocks } from "./uids.js";
import { msParam, msToTs, tsToMs } from "./schema.js";

/** Rows of body_chunks hold this many octets: big enough for few round trips, small enough to bound memory. */
export const CHUNK_SIZE = 256 * 1024;

/** Octets per result row when reading (hex text doubles it on the wire). */
const READ_SLICE = 16 * 1024;

/** Generated UIDs are `u<counter>`; the counter lives in the mailbox row and never goes back. */
const GENERATED_UID = /^u([1-9][0-9]{0,17})$/;

export function messageSql(s: string) {
  return {
    // A staged body and its chunks are each committed on their own without waiting for the WAL
    // flush: the transaction that publishes the body commits synchronously and later in the WAL, so
    // once a message is durable, so are its chunks; a crash before that loses only a staged body.
    stageBody: `
      WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
      INSERT INTO ${s}.bodies (staged_at, staged_by) SELECT now(), $1 FROM relaxed RETURNING id::text AS id`,
    chunk: `
      WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
      INSERT INTO ${s}.body_chunks (body_id, seq, data) SELECT $1::bigint, $2::int, $3::bytea FROM relaxed`,
    // No row back: the body is gone (swept as abandoned), was published already, or lacks a chunk. The
    // chunks were committed without waiting for the WAL flush, so a database crash between two of
    // them can lose one while later ones, written on a new connection, are kept: counting them here
    // is what keeps such a hole from being acknowledged. (octet_length reads a stored value's length
    // without fetching it.)
    publishBody: `
      UPDATE ${s}.bodies SET size = $2, refs = $3, staged_at = NULL, staged_by = NULL
      WHERE id = $1 AND staged_at IS NOT NULL
        AND (SELECT count(*) = $4::bigint AND coalesce(max(seq) + 1, 0) = $4::bigint AND coalesce(sum(octet_length(data)), 0) = $2::bigint
             FROM ${s}.body_chunks WHERE body_id = $1)`,
    // Chunks go with their body (ON DELETE CASCADE). A published body is never touched.
    dropStaged: `DELETE FROM ${s}.bodies WHERE id = $1 AND staged_at IS NOT NULL`,
    sweepStaged: `DELETE FROM ${s}.bodies WHERE staged_at < now() - $1::bigint * interval '1 millisecond'`,
    stagers: `SELECT id::text AS id, staged_by FROM ${s}.bodies WHERE staged_at IS NOT NULL AND staged_by IS NOT NULL`,
    dropStagedMany: `DELETE FROM ${s}.bodies WHERE id = ANY ($1::bigint[]) AND staged_at IS NOT NULL`,
    // An explicit UID of the generated shape moves the counter past it, so the counter never produces it.
    keepUid: `
      INSERT INTO ${s}.mailboxes AS m (id, next_uid) VALUES ($1, $2::bigint + 1)
      ON CONFLICT (id) DO UPDATE SET next_uid = GREATEST(m.next_uid, EXCLUDED.next_uid)`,
    uidTaken: `SELECT 1 FROM ${s}.messages WHERE mailbox = $1 AND uid = $2`,
    uidMark: `SELECT next_uid::text AS next FROM ${s}.mailboxes WHERE id = $1`,
    // One row per mailbox for one body, in the order given ($5 mailboxes, $6 UIDs).
    insertMessages: `
      INSERT INTO ${s}.messages (mailbox, uid, body_id, size, received_at, retrieved_at)
      SELECT t.mailbox, t.uid, $1::bigint, $2::bigint, COALESCE(${msToTs("$3")}, now()), ${msToTs("$4")}
      FROM unnest($5::text[], $6::text[]) WITH ORDINALITY AS t (mailbox, uid, n) ORDER BY t.n
      RETURNING ${tsToMs("received_at")} AS received_at, ${tsToMs("retrieved_at")} AS retrieved_at`,
    list: `
      SELECT uid, size::float8 AS size, ${tsToMs("received_at")} AS received_at, ${tsToMs("retrieved_at")} AS retrieved_at
      FROM ${s}.messages WHERE mailbox = $1 ORDER BY seq`,
    // A chunk is sent as slices small enough that each result row fits in one socket read: pg then
    // parses it in place, where a 512 KiB row would make it grow and copy a buffer several times.
    // With STORAGE EXTERNAL, substring reads only the TOAST pieces it needs. The octets travel as
    // base64 text (see fromBase64), not as bytea's hex.
    readChunk: `
      SELECT encode(substring(c.data FROM g.off + 1 FOR $3), 'base64') AS data
      FROM ${s}.body_chunks c, generate_series(0, octet_length(c.data) - 1, $3) AS g (off)
      WHERE c.body_id = $1 AND c.seq = $2
      ORDER BY g.off`,
    // The message's row and the slices of its first chunk together: one round trip for a RETR of
    // nearly all mail (one chunk holds 256 KiB). An empty body has no chunk: one row, data NULL.
    readFirst: `
      SELECT m.body_id::text AS body_id, m.size::float8 AS size, encode(substring(c.data FROM g.off + 1 FOR $3), 'base64') AS data
      FROM ${s}.messages m
      LEFT JOIN ${s}.body_chunks c ON c.body_id = m.body_id AND c.seq = 0
      LEFT JOIN LATERAL generate_series(0, octet_length(c.data) - 1, $3) AS g (off) ON true
      WHERE m.mailbox = $1 AND m.uid = $2
      ORDER BY g.off`,
    // Shared bodies are locked in id order before their counts change, so two expunges of messages
    // delivered to the same pair of mailboxes cannot deadlock on each other's bodies.
    lockBodies: `
      SELECT b.id FROM ${s}.bodies b
      WHERE b.id IN (SELECT body_id FROM ${s}.messages WHERE mailbox = $1 AND uid = ANY ($2::text[]))
      ORDER BY b.id FOR UPDATE`,
    expunge: `
      WITH gone AS (DELETE FROM ${s}.messages WHERE mailbox = $1 AND uid = ANY ($2::text[]) RETURNING body_id),
           counts AS (SELECT body_id, count(*)::int AS n FROM gone GROUP BY body_id)
      UPDATE ${s}.bodies b SET refs = b.refs - c.n FROM counts c WHERE b.id = c.body_id
      RETURNING b.id::text AS id, b.refs, c.n`,
    // Chunks go with their body (ON DELETE CASCADE).
    dropBodies: `DELETE FROM ${s}.bodies WHERE id = ANY ($1::bigint[]) AND refs <= 0`,
    markRetrieved: `
      UPDATE ${s}.messages SET retrieved_at = now()
      WHERE mailbox = $1 AND uid = ANY ($2::text[]) AND retrieved_at IS NULL`,
    listMailboxes: `SELECT id FROM ${s}.mailboxes ORDER BY id`,
  };
}

export type MessageSql = ReturnType<typeof messageSql>;

interface MessageRow {
  uid: string;
  size: number;
  received_at: number;
  retrieved_at: number | null;
}

export function toInfo(row: MessageRow): MessageInfo {
  return { uid: row.uid, size: row.size, receivedAt: row.received_at, retrievedAt: row.retrieved_at };
}

/** A body whose octets are all stored, not yet referenced by any message or queue item. */
export interface StagedBody {
  readonly bodyId: string;
  /** Chunks written, numbered 0 to chunks - 1. */
  readonly chunks: number;
  readonly size: number;
}

/**
 * Streams the source into a staged body: a `bodies` row with `staged_at` set that no message or
 * queue row references yet, its chunks written by short statements of their own. No connection is
 * held while waiting for the source, so slow senders (one byte a minute for half an hour) cannot take
 * the pool from everyone else; they only slow down their own message. At most one chunk of the
 * message is in memory, and the source is pulled only after the previous chunk was written, so a
 * slow database slows the sender down instead of filling memory.
 *
 * On any failure (source error, abort, `maxBytes`, database error) the staged body is dropped again;
 * if even that fails, `sweepStaged` removes it later. Source errors are rethrown as they are.
 */
export async function stageBody(
  db: Db,
  sql: MessageSql,
  source: AsyncIterable<Uint8Array>,
  signal?: AbortSignal,
): Promise<StagedBody> {
  const iterator = source[Symbol.asyncIterator]();
  let bodyId: string | undefined;
  let done = false;
  try {
    const stamp = processStamp();
    const staged = await db.query<{ id: string }>("stage message body", sql.stageBody, [stamp ? JSON.stringify(stamp) : null]);
    const id = staged.rows[0]!.id;
    bodyId = id;
    const buffer = Buffer.allocUnsafe(CHUNK_SIZE);
    let fill = 0;
    let seq = 0;
    let size = 0;
    const flush = async (): Promise<void> => {
      if (fill === 0) return;
      // Awaiting the insert before refilling the buffer means pg is done with these bytes.
      await db.query("store message body", sql.chunk, [id, seq++, buffer.subarray(0, fill)]);
      fill = 0;
    };
    for (;;) {
      const next = await nextFromSource(iterator, signal);
      if (next.done) {
        done = true;
        break;
      }
      const chunk = next.value;
      size += chunk.length;
      let offset = 0;
      while (offset < chunk.length) {
        const n = Math.min(CHUNK_SIZE - fill, chunk.length - offset);
        buffer.set(chunk.subarray(offset, offset + n), fill);
        fill += n;
        offset += n;
        if (fill === CHUNK_SIZE) await flush();
      }
    }
    await flush();
    return { bodyId: id, size, chunks: seq };
  } catch (error) {
    if (bodyId !== undefined) await dropStaged(db, sql, bodyId);
    if (error instanceof SourceFailure) throw error.cause;
    throw error;
  } finally {
    // Stopped early: let the source clean up (close a file, stop a socket read). Not awaited, because
    // after an abort the source may still be stuck in the pending next(), and return() queues behind it.
    if (!done) {
      try {
        iterator.return?.().catch(() => undefined);
      } catch {
        // A source whose return() throws has nothing left for us to release.
      }
    }
  }
}

/**
 * Makes a staged body a stored one with `refs` users, inside the caller's transaction, which also
 * inserts the rows that reference it: readers see the whole message or nothing.
 */
export async function publishBody(client: pg.PoolClient, sql: MessageSql, body: StagedBody, refs: number): Promise<void> {
  const result = await client.query(sql.publishBody, [body.bodyId, body.size, refs, body.chunks]);
  if ((result.rowCount ?? 0) === 0) {
    throw new StoreError("temporary", `postgres: staged message body ${body.bodyId} is gone or incomplete (swept as abandoned, or a chunk lost in a database crash)`);
  }
}

/** Drops a staged body that will not be published. Failing here only leaves it to the sweep. */
export async function dropStaged(db: Db, sql: MessageSql, bodyId: string): Promise<void> {
  try {
    await db.query("drop unpublished message body", sql.dropStaged, [bodyId]);
  } catch (error) {
    db.logger.warn(
      { err: error instanceof Error ? error.message : String(error), body: bodyId },
      "postgres: could not drop an unpublished message body; the sweep will",
    );
  }
}

/**
 * Staged bodies older than this are left over from a crash on another machine (or a cleanup that
 * failed) and are swept. Nothing stages for that long: an SMTP session ends after 30 minutes at most.
 */
export const STAGED_MAX_AGE_MS = 6 * 60 * 60 * 1000;

/**
 * Deletes abandoned staged bodies and their chunks: those whose staging process has ended on this
 * machine (a killed server's, judged like lease owners), and any staged longer than `maxAgeMs`.
 * Returns how many.
 */
export async function sweepStaged(db: Db, sql: MessageSql, maxAgeMs = STAGED_MAX_AGE_MS): Promise<number> {
  const stagers = await db.query<{ id: string; staged_by: string }>("read message body stagers", sql.stagers, []);
  const ended = stagers.rows.filter((row) => processHasEnded(parseProcessStamp(row.staged_by))).map((row) => row.id);
  const dropped = ended.length > 0 ? await db.query("sweep abandoned message bodies", sql.dropStagedMany, [ended]) : null;
  const old = await db.query("sweep abandoned message bodies", sql.sweepStaged, [String(Math.max(0, Math.round(maxAgeMs)))]);
  return (dropped?.rowCount ?? 0) + (old.rowCount ?? 0);
}

/**
 * Inserts the message row under a UID the caller keeps (migration, import), moving the mailbox's
 * counter past it when it has the generated shape, so the counter never hands it out.
 */
export async function insertMessage(
  client: pg.PoolClient,
  sql: MessageSql,
  mailbox: MailboxId,
  body: { bodyId: string; size: number },
  uid: Uid,
  options: { receivedAt?: number | undefined; retrievedAt?: number | null | undefined },
): Promise<MessageInfo> {
  const bump = GENERATED_UID.exec(uid)?.[1] ?? "0";
  await client.query(sql.keepUid, [mailbox, bump]);
  const inserted = await client.query<{ received_at: number; retrieved_at: number | null }>(sql.insertMessages, [
    body.bodyId,
    body.size,
    msParam(options.receivedAt),
    msParam(options.retrievedAt),
    [mailbox],
    [uid],
  ]);
  const row = inserted.rows[0]!;
  return { uid, size: body.size, receivedAt: row.received_at, retrievedAt: row.retrieved_at };
}

export async function appendMessage(
  db: Db,
  sql: MessageSql,
  deliverySql: DeliverySql,
  uidBlocks: UidBlocks,
  mailbox: MailboxId,
  source: AsyncIterable<Uint8Array>,
  options: AppendOptions,
): Promise<MessageInfo> {
  if (options.uid !== undefined) assertUid(options.uid);
  const uid = options.uid;
  if (uid === undefined) {
    const [info] = await storeNewMessage(db, sql, deliverySql, uidBlocks, [mailbox], guardAppendSource(source, options), options);
    return info!;
  }
  // Fail before taking in megabytes; the unique constraint still guards against a racing append.
  if (((await db.query("check uid", sql.uidTaken, [mailbox, uid])).rowCount ?? 0) > 0) {
    throw new StoreError("exists", `postgres: uid ${uid} already in ${mailbox}`);
  }
  const body = await stageBody(db, sql, guardAppendSource(source, options), options.signal);
  let info: MessageInfo;
  try {
    info = await db.transaction(`append to ${mailbox}`, async (client) => {
      await publishBody(client, sql, body, 1);
      return insertMessage(client, sql, mailbox, body, uid, options);
    });
  } catch (error) {
    await dropStaged(db, sql, body.bodyId);
    throw error;
  }
  // The counter moved past a UID of the generated shape; UIDs this store took ahead may include it.
  if (GENERATED_UID.test(uid)) uidBlocks.forget([mailbox]);
  return info;
}

/**
 * node-postgres reads every column as text, and bytea's text form is hex: two characters per octet,
 * decoded by `Buffer.from(…, "hex")`, which took 30–40 µs per 16 KiB on Node 20 and 170 µs on Deno.
 * base64 is a third shorter on the wire and decodes four to fifteen times faster there (Bun decodes
 * both fast). PostgreSQL breaks its base64 into lines of 76; Buffer.from skips the line ends on every
 * runtime.
 */
function fromBase64(text: string): Buffer {
  return Buffer.from(text, "base64");
}

/**
 * A mailbox message's octets, or null if there is no such message. The first chunk comes with the
 * lookup (see readFirst); the rest as readBody reads it.
 */
export async function readMessage(
  db: Db,
  sql: MessageSql,
  mailbox: MailboxId,
  uid: Uid,
): Promise<AsyncIterable<Uint8Array> | null> {
  const result = await db.query<{ body_id: string; size: number; data: string | null }>("read message", sql.readFirst, [
    mailbox,
    uid,
    READ_SLICE,
  ]);
  const row = result.rows[0];
  if (row === undefined) return null;
  const head: Buffer[] = [];
  for (const { data } of result.rows) if (data !== null) head.push(fromBase64(data));
  return readBody(db, sql, row.body_id, row.size, head);
}

/**
 * The message's octets, one stored chunk per query, so reading 50 MB never holds more than one chunk.
 * Each chunk comes back as several small rows (see readChunk), and each row is yielded as it is.
 * `head`, when given, holds the first chunk's rows already read.
 */
export async function* readBody(
  db: Db,
  sql: MessageSql,
  bodyId: string,
  size: number,
  head?: readonly Buffer[],
): AsyncGenerator<Uint8Array> {
  let seq = 0;
  let sent = 0;
  if (head !== undefined) {
    seq = 1;
    for (const data of head) {
      sent += data.length;
      yield data;
    }
  }
  while (sent < size) {
    const result = await db.query<{ data: string }>("read message", sql.readChunk, [bodyId, seq, READ_SLICE]);
    if (result.rows.length === 0) throw new StoreError("not-found", "postgres: message was deleted while being read");
    seq++;
    for (const row of result.rows) {
      const data = fromBase64(row.data);
      sent += data.length;
      yield data;
    }
  }
}
