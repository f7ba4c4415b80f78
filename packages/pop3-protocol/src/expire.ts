import { hasStoreErrorCode, type Store } from "@mailroom/store";

export interface ExpireOptions {
  /** Messages first retrieved at least this many days ago are removed. Never-retrieved ones stay. */
  readonly days: number;
  /** Lease holder name, for diagnostics ("expire job on host-a"). */
  readonly holder: string;
  /** Default 60 000. */
  readonly leaseTtlMs?: number;
  /** The clock, in ms since the epoch; default `Date.now()`. */
  readonly now?: number;
  /**
   * Stops the run between two mailboxes (a server shutting down need not wait for a whole store);
   * the result then counts what was done, and the next run catches up.
   */
  readonly signal?: AbortSignal;
}

export interface ExpireResult {
  /** Mailboxes examined (the lease was taken). */
  readonly mailboxes: number;
  /** Messages removed in all. */
  readonly removed: number;
  /** Mailboxes left alone because a session held them; the next run catches up. */
  readonly skipped: number;
}

const DAY_MS = 86_400_000;

/**
 * The EXPIRE retention policy (RFC 2449): deletes messages retrieved more than `days` ago, one mailbox
 * at a time, each under that mailbox's lease so that it never changes a maildrop under a live session.
 * Failures other than "in use" are thrown: the caller (a timer in the app) logs them and tries later.
 */
export async function runExpire(store: Store, options: ExpireOptions): Promise<ExpireResult> {
  if (!(options.days >= 0)) throw new RangeError("runExpire: days must be a number >= 0");
  const cutoff = (options.now ?? Date.now()) - options.days * DAY_MS;
  let mailboxes = 0;
  let removed = 0;
  let skipped = 0;
  for (const id of await store.listMailboxes()) {
    if (options.signal?.aborted) break;
    const mailbox = store.mailbox(id);
    let lease;
    try {
      lease = await mailbox.acquireLease({ holder: options.holder, ttlMs: options.leaseTtlMs ?? 60_000 });
    } catch (error) {
      if (hasStoreErrorCode(error, "in-use")) {
        skipped++;
        continue;
      }
      throw error;
    }
    try {
      const old = (await mailbox.list()).filter((m) => m.retrievedAt !== null && m.retrievedAt <= cutoff);
      if (old.length > 0) removed += await mailbox.expunge(old.map((m) => m.uid), lease);
      mailboxes++;
    } finally {
      await lease.release();
    }
  }
  return { mailboxes, removed, skipped };
}
