import { randomBytes } from "node:crypto";

/**
 * The outbound queue: mail accepted for other domains waits here, in the same store as the mailboxes,
 * until a delivery worker hands it to the next hop. The contract mirrors the mailbox one: durable on
 * resolve, streamed bodies, and a claim (a lease per item) so that two server processes never deliver
 * the same item at once.
 */

/** One recipient of a queued message and where its delivery stands. */
export interface QueueRecipient {
  readonly address: string;
  /** "pending" until delivered, or failed for good. */
  readonly status: "pending" | "delivered" | "failed";
  /** The last reply or error for this recipient ("250 2.0.0 ok", "550 5.1.1 no such user"). */
  readonly diagnostic?: string;
  /**
   * A failed recipient the sender was already told about: a bounce goes out at the end of the attempt
   * that failed it, not only when the whole item is done, and the next one does not name it again.
   * Stores keep it as given, like the other fields.
   */
  readonly notified?: boolean;
}

export interface QueueItem {
  readonly id: string;
  /** The envelope sender; "" for the null reverse path (bounces), which never gets a bounce itself. */
  readonly sender: string;
  readonly recipients: readonly QueueRecipient[];
  /** Octets of the message as `readMessage` yields them. */
  readonly size: number;
  readonly createdAt: number;
  /** Delivery attempts made so far. */
  readonly attempts: number;
  /** Not claimable before this time (ms since the epoch). */
  readonly nextAttemptAt: number;
  /** Last error text, for `mailroom queue list`. */
  readonly lastError: string | null;
  /** "queued" waits for delivery; "dead" gave up and is kept for the operator. */
  readonly state: "queued" | "dead";
  /** Free-form envelope data the worker needs (8BITMIME, SMTPUTF8, DSN ENVID/RET, authenticated user). */
  readonly meta: Readonly<Record<string, string>>;
}

export interface RetryOptions {
  /** End a live claim too (default: leave an item that is being delivered alone). */
  readonly breakClaim?: boolean;
}

/** "retried": the item is queued and due now; "in-delivery": a live claim holds it, nothing changed. */
export type RetryOutcome = "retried" | "in-delivery";

export interface EnqueueOptions {
  readonly maxBytes?: number;
  /** Aborting stops the enqueue; nothing is kept. Only the queue's while `enqueue` runs (see DeliverOptions). */
  readonly signal?: AbortSignal;
  /** First attempt not before this time; default now. */
  readonly notBefore?: number;
  /** The message was already acknowledged by this server: no soft limit may refuse it (see DeliverOptions). */
  readonly accepted?: boolean;
}

/** A claimed item: exclusive to the claimer until `expiresAt`, or until it finishes, reschedules or dead-letters it. */
export interface QueueClaim {
  readonly item: QueueItem;
  /** Fencing token; operations with a claim that expired and was claimed again fail with "lease-lost". */
  readonly token: string;
  readonly expiresAt: number;
  /**
   * The ttl the item was claimed with, which `renew` extends by. Stores fill it in; a claim built
   * without it (a test double) makes `renew` fall back to the store's own record or a default.
   */
  readonly ttlMs?: number;
}

export interface ClaimOptions {
  /** Who claims, for diagnostics. */
  readonly holder: string;
  readonly ttlMs: number;
  /** At most this many items. Default 1. */
  readonly limit?: number;
  /** Only items due at or before this time; default now. */
  readonly now?: number;
}

export interface RescheduleOptions {
  readonly nextAttemptAt: number;
  readonly error: string;
  /** Per-recipient outcomes of this attempt; recipients not named keep their status. */
  readonly recipients?: readonly QueueRecipient[];
}

/**
 * Semantics every store implements (the conformance suite checks them against each adapter):
 *
 * - Items are shared by every instance of the store (every server process); `get` and `list` see all of
 *   them, and they survive a restart. Ids are unique and never reused.
 * - A claim is a lease on one item. While it is live, no other `claim` returns that item. Once it
 *   expires, the item may be claimed again; the old claim's `renew`, `finish`, `reschedule` and
 *   `deadLetter` then fail with StoreError "lease-lost". A claim that expired but was not taken over yet
 *   may also fail that way: a worker must renew well before `expiresAt`. As with mailbox leases, a
 *   store may treat a claim whose process has certainly ended as expired (the bundled stores do).
 * - `finish`, `reschedule` and `deadLetter` end the claim. Each of them, and `enqueue`, is durable when
 *   it resolves.
 * - `retry` and `remove` are operator actions and need no claim. `remove` wins over a live claim, whose
 *   holder then gets "lease-lost"; `retry` leaves an item under a live claim alone (it is being
 *   delivered right now) unless asked to break the claim.
 */
export interface Queue {
  /**
   * Stores a message for delivery to `recipients` (each starts "pending"). Resolves only when the item is
   * durable; a failed, aborted or too-big enqueue leaves nothing behind. The source is consumed once,
   * with backpressure, and never held whole in memory by a store with `boundedMemory`.
   */
  enqueue(
    envelope: { readonly sender: string; readonly recipients: readonly string[]; readonly meta?: Readonly<Record<string, string>> },
    source: AsyncIterable<Uint8Array>,
    options?: EnqueueOptions,
  ): Promise<QueueItem>;

  /**
   * Claims due "queued" items (`nextAttemptAt <= now`), oldest due first (by `nextAttemptAt`, then
   * `createdAt`), up to `limit`, that nobody holds a live claim on. Resolves with an empty list when
   * nothing is due. Two instances claiming at the same moment never get the same item.
   */
  claim(options: ClaimOptions): Promise<readonly QueueClaim[]>;

  /** Extends a claim by its ttl. "lease-lost" if it expired and was claimed by someone else. */
  renew(claim: QueueClaim): Promise<QueueClaim>;

  /** The message of an item, streamed. "not-found" if the item is gone. */
  readMessage(id: string): Promise<AsyncIterable<Uint8Array>>;

  /** Delivery done (every recipient delivered or failed): removes the item and its message. */
  finish(claim: QueueClaim): Promise<void>;

  /**
   * Not delivered yet: records the outcome (`lastError`, merged recipient statuses), counts the attempt,
   * and releases the claim; the item is claimable again from `nextAttemptAt`.
   */
  reschedule(claim: QueueClaim, options: RescheduleOptions): Promise<void>;

  /**
   * Gives up: the item stays, in state "dead", for the operator to see, retry or delete. Counts the
   * attempt and records `error` and the recipient statuses like `reschedule`; the claim ends.
   */
  deadLetter(claim: QueueClaim, options: { readonly error: string; readonly recipients?: readonly QueueRecipient[] }): Promise<void>;

  /** Every item (both states), oldest first (by `createdAt`, then id). */
  list(): Promise<readonly QueueItem[]>;

  /** One item, or null if there is none with this id. */
  get(id: string): Promise<QueueItem | null>;

  /**
   * Operator: the ids of the items being delivered right now, i.e. held by a live claim (one `retry`
   * would answer "in-delivery" for), in any order. For `mailroom queue list`; not a hot path.
   */
  delivering(): Promise<readonly string[]>;

  /**
   * Operator: make an item (also a dead one) "queued" and due now. Attempts are kept. An item held by
   * a live claim is being delivered right now and is left alone ("in-delivery"); with `breakClaim` the
   * claim ends instead, its holder gets "lease-lost", and the message may go out twice (for a holder
   * that is stuck, or gone where the store cannot tell). "not-found" if unknown.
   */
  retry(id: string, options?: RetryOptions): Promise<RetryOutcome>;

  /** Operator: delete an item whatever its state. "not-found" if unknown. */
  remove(id: string): Promise<void>;
}

const ID_RANDOM = "0123456789abcdefghijklmnopqrstuvwxyz";

/**
 * A new queue item id: `q`, the time in base 36 (so ids sort roughly by age), and 12 random characters.
 * Only `[0-9a-z]`, so it is safe as a file name, a key part and a log token.
 */
export function newQueueId(now = Date.now()): string {
  const random = randomBytes(12);
  let tail = "";
  for (const byte of random) tail += ID_RANDOM[byte % 36];
  return `q${Math.max(0, Math.floor(now)).toString(36).padStart(9, "0")}${tail}`;
}

/** True for strings `newQueueId` could have made; stores use it to refuse ids that are not theirs. */
export function isQueueId(id: string): boolean {
  return /^q[0-9a-z]{21}$/.test(id);
}

/**
 * Applies one attempt's outcomes to the recipient list: named recipients take the new status and
 * diagnostic, the others stay as they were, and addresses the item does not have are ignored.
 */
export function mergeRecipients(
  current: readonly QueueRecipient[],
  updates: readonly QueueRecipient[] | undefined,
): QueueRecipient[] {
  if (!updates || updates.length === 0) return current.map((r) => ({ ...r }));
  const byAddress = new Map(updates.map((u) => [u.address, u] as const));
  return current.map((r) => {
    const u = byAddress.get(r.address);
    if (!u) return { ...r };
    return {
      address: r.address,
      status: u.status,
      ...(u.diagnostic === undefined ? {} : { diagnostic: u.diagnostic }),
      ...(u.notified === true ? { notified: true } : {}),
    };
  });
}

/** Claim order: due first, then older first, then by id, so every store picks the same way. */
export function compareDue(
  a: Pick<QueueItem, "nextAttemptAt" | "createdAt" | "id">,
  b: Pick<QueueItem, "nextAttemptAt" | "createdAt" | "id">,
): number {
  return a.nextAttemptAt - b.nextAttemptAt || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** List order: older first, then by id. */
export function compareAge(a: QueueItem, b: QueueItem): number {
  return a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}
