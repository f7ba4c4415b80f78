import { isStoreError, type Queue, type QueueItem, type RetryOutcome } from "@mailroom/store";

/** What `mailroom queue list` shows per item. */
export interface QueueRow {
  readonly id: string;
  readonly state: "queued" | "dead";
  readonly sender: string;
  /** Recipients still waiting. */
  readonly pending: readonly string[];
  readonly delivered: number;
  readonly failed: number;
  readonly size: number;
  readonly attempts: number;
  /** When it was queued (ms since the epoch). */
  readonly createdAt: number;
  readonly ageMs: number;
  readonly nextAttemptAt: number;
  readonly lastError: string | null;
  /** A worker is delivering it right now (a live claim holds it). */
  readonly inDelivery: boolean;
}

export interface QueueStats {
  /** Items waiting for delivery. */
  readonly queued: number;
  /** Items given up and kept for the operator. */
  readonly dead: number;
  /** Age of the oldest waiting item, or 0. */
  readonly oldestAgeMs: number;
  /** Octets of all items. */
  readonly bytes: number;
}

export function toRow(item: QueueItem, now = Date.now(), inDelivery = false): QueueRow {
  return {
    id: item.id,
    state: item.state,
    sender: item.sender,
    pending: item.recipients.filter((r) => r.status === "pending").map((r) => r.address),
    delivered: item.recipients.filter((r) => r.status === "delivered").length,
    failed: item.recipients.filter((r) => r.status === "failed").length,
    size: item.size,
    attempts: item.attempts,
    createdAt: item.createdAt,
    ageMs: Math.max(0, now - item.createdAt),
    nextAttemptAt: item.nextAttemptAt,
    lastError: item.lastError,
    inDelivery,
  };
}

export async function listQueue(queue: Queue, now = Date.now()): Promise<QueueRow[]> {
  const [items, delivering] = await Promise.all([queue.list(), queue.delivering()]);
  const busy = new Set(delivering);
  return items.map((item) => toRow(item, now, busy.has(item.id)));
}

export async function queueStats(queue: Queue, now = Date.now()): Promise<QueueStats> {
  const items = await queue.list();
  const queued = items.filter((i) => i.state === "queued");
  const oldest = queued.reduce((min, i) => Math.min(min, i.createdAt), Number.POSITIVE_INFINITY);
  return {
    queued: queued.length,
    dead: items.length - queued.length,
    oldestAgeMs: queued.length > 0 ? Math.max(0, now - oldest) : 0,
    bytes: items.reduce((sum, i) => sum + i.size, 0),
  };
}

/**
 * Makes an item (also a dead one) due now; one being delivered right now is left alone
 * ("in-delivery") unless `force` breaks its claim. Throws the store's "not-found" for an unknown id.
 */
export function retryItem(queue: Queue, id: string, options: { readonly force?: boolean } = {}): Promise<RetryOutcome> {
  return queue.retry(id, { breakClaim: options.force ?? false });
}

/** What `retryAll` did. */
export interface RetryAllOutcome {
  /** Made due now. */
  readonly retried: number;
  /** Left alone: being delivered right now. */
  readonly inDelivery: number;
  /** Left alone: given up ("dead"); each needs `retryItem` of its own. */
  readonly dead: number;
}

/**
 * Makes every waiting item due now, like `postqueue -f` (after the outage of a destination, say).
 * Dead items are left for the operator to retry one by one; items being delivered are left alone.
 * Items finished or removed meanwhile are skipped.
 */
export async function retryAll(queue: Queue): Promise<RetryAllOutcome> {
  let retried = 0;
  let inDelivery = 0;
  let dead = 0;
  for (const item of await queue.list()) {
    if (item.state === "dead") {
      dead++;
      continue;
    }
    try {
      if ((await queue.retry(item.id)) === "retried") retried++;
      else inDelivery++;
    } catch (error) {
      if (!isStoreError(error) || error.code !== "not-found") throw error;
    }
  }
  return { retried, inDelivery, dead };
}

/** Deletes an item without a bounce. Throws the store's "not-found" for an unknown id. */
export function deleteItem(queue: Queue, id: string): Promise<void> {
  return queue.remove(id);
}

/** `5m`, `3h`, `2d`: short enough for a table column. */
export function formatAge(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/**
 * `mailroom queue list --json`: one JSON object per item, one item per line (like `postqueue -j`),
 * with times as ISO 8601 text.
 */
export function formatQueueJson(rows: readonly QueueRow[]): string[] {
  return rows.map((row) =>
    JSON.stringify({
      id: row.id,
      state: row.state,
      inDelivery: row.inDelivery,
      sender: row.sender,
      pending: row.pending,
      delivered: row.delivered,
      failed: row.failed,
      size: row.size,
      attempts: row.attempts,
      queuedAt: new Date(row.createdAt).toISOString(),
      nextAttemptAt: new Date(row.nextAttemptAt).toISOString(),
      lastError: row.lastError,
    }),
  );
}

/** The `mailroom queue list` table, one item per block, like `postqueue -p`. */
export function formatQueue(rows: readonly QueueRow[], now = Date.now()): string {
  if (rows.length === 0) return "Mail queue is empty\n";
  const lines: string[] = [];
  for (const row of rows) {
    // Like the "*" postqueue -p puts after an id in Postfix's active queue.
    const next = row.inDelivery
      ? "in delivery"
      : row.state === "dead"
        ? "dead"
        : row.nextAttemptAt <= now
          ? "due now"
          : `next in ${formatAge(row.nextAttemptAt - now)}`;
    lines.push(`${row.id}  ${row.size} B  age ${formatAge(row.ageMs)}  ${row.attempts} attempts  ${next}  from <${row.sender}>`);
    for (const r of row.pending) lines.push(`    <${r}>`);
    if (row.delivered + row.failed > 0) lines.push(`    (${row.delivered} delivered, ${row.failed} failed)`);
    if (row.lastError) lines.push(`    last error: ${row.lastError}`);
  }
  const total = rows.reduce((sum, r) => sum + r.size, 0);
  lines.push(`-- ${rows.length} item${rows.length === 1 ? "" : "s"}, ${total} B`);
  return `${lines.join("\n")}\n`;
}
