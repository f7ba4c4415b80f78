import type { MailboxId, MessageInfo, Uid } from "@mailroom/store";
import { Buffer } from "node:buffer";
import { SourceFailure, nextFromSource, type Db } from "./db.js";
import { classifyPgError } from "./errors.js";
import { CHUNK_SIZE, dropStaged, publishBody, stageBody, type MessageSql } from "./messages.js";
import { msParam, msToTs, tsToMs } from "./schema.js";
import type { UidBlocks } from "./uids.js";

/**
 * New mail (append without an explicit UID, deliver to one or more mailboxes), written so that
 * concurrent deliveries to one mailbox do not queue behind each other's commits.
 *
 * 1. UIDs are taken from the mailbox counters in a statement of their own, committed without waiting
 *    for the WAL flush, so the counter row is locked for microseconds instead of for a whole delivery
 *    and its fsync. That is safe: the message's own commit is synchronous and comes later in the
 *    WAL, so once a message is durable, so is the counter step that named it. A crash before that
 *    can only lose a step whose UID no committed message carries; handing it out again harms nobody.
 *    A busy mailbox takes several at a time (see UidBlocks), so most of its deliveries skip this step;
 *    such a step is committed synchronously, because the UIDs it takes ahead live on in this process's
 *    memory: were the step lost in a database crash this process survives, they would be handed out
 *    here and again from the counter.
 * 2. A message that fits in one chunk (nearly all mail) is stored by one statement that inserts body,
 *    chunk and message rows at once, committed synchronously: two round trips for the whole delivery.
 *    A bigger message is staged chunk by chunk in statements of their own (see stageBody), so a slow
 *    sender holds no connection, and is then published in one short transaction that inserts every
 *    mailbox's row: all or none, and never visible in part.
 *
 * `messages.seq` (arrival order) is then taken when the rows are inserted, not at commit, so two
 * deliveries that overlap may list in the order they were inserted. Maildir orders by the time a
 * delivery started in the same way.
 */
export function deliverySql(s: string) {
  return {
    // next_uid becomes GREATEST(next_uid, clock in µs) + k: commits lost in a crash or a failover to
    // an asynchronous replica take the counter back, but not the clock, which has moved on past every
    // UID handed out before, so none comes again (see the README). The clock is read once (a CTE with
    // a volatile function is not inlined), so EXCLUDED.next_uid - clock is k. All bigint.
    takeUids: `
      WITH relaxed AS (SELECT set_config('synchronous_commit', $3::text, true)),
      clock AS (SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us FROM relaxed)
      INSERT INTO ${s}.mailboxes AS m (id, next_uid)
      SELECT t.id, clock.us + t.k FROM unnest($1::text[], $2::int[]) AS t (id, k), clock ORDER BY t.id
      ON CONFLICT (id) DO UPDATE SET next_uid = GREATEST(m.next_uid - (SELECT us FROM clock), 0) + EXCLUDED.next_uid
      RETURNING id, next_uid::text AS next`,
    storeWhole: `
      WITH strict AS (SELECT set_config('synchronous_commit', 'on', true)),
      body AS (INSERT INTO ${s}.bodies (size, refs) SELECT $1::bigint, $2::int FROM strict RETURNING id),
      chunk AS (INSERT INTO ${s}.body_chunks (body_id, seq, data) SELECT id, 0, $3::bytea FROM body WHERE $1::bigint > 0)
      INSERT INTO ${s}.messages (mailbox, uid, body_id, size, received_at, retrieved_at)
      SELECT t.mailbox, t.uid, body.id, $1::bigint, COALESCE(${msToTs("$4")}, now()), ${msToTs("$5")}
      FROM body, unnest($6::text[], $7::text[]) WITH ORDINALITY AS t (mailbox, uid, n) ORDER BY t.n
      RETURNING ${tsToMs("received_at")} AS received_at, ${tsToMs("retrieved_at")} AS retrieved_at`,
  };
}

export type DeliverySql = ReturnType<typeof deliverySql>;

export interface NewMessageOptions {
  readonly receivedAt?: number | undefined;
  readonly retrievedAt?: number | null | undefined;
  readonly signal?: AbortSignal | undefined;
}

/**
 * Reads up to one chunk of the source; `ended` says the source had no more. The pieces are copied
 * (the source may reuse its buffers) and joined at their exact size, so a 4 KB message does not cost
 * a 256 KiB buffer.
 */
async function firstChunk(
  iterator: AsyncIterator<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<{ data: Buffer; ended: boolean; spill: Uint8Array | null }> {
  const parts: Buffer[] = [];
  let fill = 0;
  for (;;) {
    const next = await nextFromSource(iterator, signal);
    if (next.done) return { data: Buffer.concat(parts, fill), ended: true, spill: null };
    const chunk = next.value;
    const n = Math.min(CHUNK_SIZE - fill, chunk.length);
    parts.push(Buffer.from(chunk.subarray(0, n)));
    fill += n;
    // A chunk that does not fit completes the first one; what is left over goes on to stageBody.
    if (fill === CHUNK_SIZE) return { data: Buffer.concat(parts, fill), ended: false, spill: n < chunk.length ? chunk.slice(n) : null };
  }
}

/** The first chunk, any spill, then the rest of the source; the source is released when we stop early. */
async function* resumed(first: Uint8Array, spill: Uint8Array | null, iterator: AsyncIterator<Uint8Array>): AsyncGenerator<Uint8Array> {
  let done = false;
  try {
    yield first;
    if (spill) yield spill;
    for (;;) {
      const next = await iterator.next();
      if (next.done) break;
      yield next.value;
    }
    done = true;
  } finally {
    if (!done) iterator.return?.().catch(() => undefined);
  }
}

/**
 * The start of a message: `whole` when the source ended within the first chunk (nearly all mail), so
 * that it can be stored by one statement; otherwise `rest`, the source again from its first octet,
 * for stageBody. Source errors are rethrown as they are, and the source is released.
 */
export async function readHead(
  source: AsyncIterable<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<{ readonly whole: Buffer } | { readonly whole: null; readonly rest: AsyncIterable<Uint8Array> }> {
  const iterator = source[Symbol.asyncIterator]();
  try {
    const head = await firstChunk(iterator, signal);
    return head.ended ? { whole: head.data } : { whole: null, rest: resumed(head.data, head.spill, iterator) };
  } catch (error) {
    iterator.return?.().catch(() => undefined);
    if (error instanceof SourceFailure) throw error.cause;
    throw error;
  }
}

/**
 * Stores one message into every mailbox of `mailboxes` (one body shared by all), all or none, and
 * returns their MessageInfo in the same order. The source must already be guarded (size, abort).
 */
export async function storeNewMessage(
  db: Db,
  sql: MessageSql,
  dsql: DeliverySql,
  uidBlocks: UidBlocks,
  mailboxes: readonly MailboxId[],
  source: AsyncIterable<Uint8Array>,
  options: NewMessageOptions,
): Promise<MessageInfo[]> {
  const head = await readHead(source, options.signal);
  // Every row of one delivery carries the same times, so the first row speaks for all.
  const toInfos = (uids: readonly Uid[], size: number, rows: readonly { received_at: number; retrieved_at: number | null }[]) =>
    uids.map((uid): MessageInfo => ({ uid, size, receivedAt: rows[0]!.received_at, retrievedAt: rows[0]!.retrieved_at }));

  if (head.whole !== null) {
    const whole = head.whole;
    const size = whole.length;
    return withUids(uidBlocks, mailboxes, async (uids) => {
      const result = await db.query<{ received_at: number; retrieved_at: number | null }>("deliver", dsql.storeWhole, [
        size,
        mailboxes.length,
        whole,
        msParam(options.receivedAt),
        msParam(options.retrievedAt),
        [...mailboxes],
        uids,
      ]);
      return toInfos(uids, size, result.rows);
    });
  }
  const body = await stageBody(db, sql, head.rest, options.signal);
  try {
    // UIDs are taken only now that the octets are in: a sender that gives up leaves no gap.
    return await withUids(uidBlocks, mailboxes, (uids) =>
      db.transaction("deliver", async (client) => {
        await publishBody(client, sql, body, mailboxes.length);
        const result = await client.query<{ received_at: number; retrieved_at: number | null }>(sql.insertMessages, [
          body.bodyId,
          body.size,
          msParam(options.receivedAt),
          msParam(options.retrievedAt),
          [...mailboxes],
          uids,
        ]);
        return toInfos(uids, body.size, result.rows);
      }),
    );
  } catch (error) {
    await dropStaged(db, sql, body.bodyId);
    throw error;
  }
}

/**
 * Runs `store` with UIDs for `mailboxes`, again with fresh ones when it hits one that is taken: an
 * import (in this process or another) can name a UID this store took ahead (see UidBlocks). It moved
 * the counter past it, so UIDs fresh from the counter do not collide. `store` must be all or nothing.
 */
async function withUids<T>(uidBlocks: UidBlocks, mailboxes: readonly MailboxId[], store: (uids: Uid[]) => Promise<T>): Promise<T> {
  let uids = await uidBlocks.take(mailboxes);
  for (let attempt = 1; ; attempt++) {
    try {
      return await store(uids);
    } catch (error) {
      if (!uidTaken(error) || attempt >= UID_ATTEMPTS) throw error;
      uidBlocks.forget(mailboxes);
      uids = await uidBlocks.take(mailboxes);
    }
  }
}

/** Inserts tried before a delivery gives up on UIDs that imports keep taking. */
const UID_ATTEMPTS = 3;

/** A unique violation: the only unique key those inserts can hit is (mailbox, uid). */
function uidTaken(error: unknown): boolean {
  return classifyPgError(error) === "exists";
}
