import { StoreError, type MailboxId, type Uid } from "@mailroom/store";
import type { Db } from "./db.js";
import type { DeliverySql } from "./delivery.js";

/** A mailbox that got a refill this soon after its last one is busy: its next refill takes more. */
const BUSY_WITHIN_MS = 1000;
/** At most this many UIDs are taken ahead for one mailbox (lost, as gaps, when the process ends). */
const MAX_SPARE = 63;
/** Mailboxes remembered; the least recently refilled goes first. */
const MAX_MAILBOXES = 4096;
/** Ranges kept per mailbox; refills that overlap in time can leave more, and the rest become gaps. */
const MAX_RANGES = 4;

interface Spares {
  /** Half-open ranges [from, to) of counter values taken from the database and not handed out yet. */
  ranges: Array<[bigint, bigint]>;
  /** How many to take beyond what a delivery needs on the next refill. */
  spare: number;
  refilledAt: number;
}

/**
 * Generated UIDs for one store. A quiet mailbox gets one UID per delivery straight from its counter
 * row, as before. A busy one (refilled again within a second) takes a few more each time, doubling up
 * to 64, and the next deliveries use them without a statement of their own: at a steady stream into
 * one mailbox that is one counter statement per 64 messages instead of one per message.
 *
 * What this gives up: UIDs taken ahead and not used before the process ends are never handed out
 * (they were counted, and the counter only grows), so a busy mailbox's UIDs have gaps, and two
 * processes delivering into it interleave their ranges. Neither matters to POP3: a UIDL is an opaque
 * name that must be unique and never reused, which the counter still guarantees; listing order is
 * arrival order (`messages.seq`), not UID order.
 */
export class UidBlocks {
  private readonly mailboxes = new Map<MailboxId, Spares>();

  constructor(
    private readonly db: Db,
    private readonly sql: DeliverySql,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * One generated UID per entry of `mailboxes` (a mailbox named twice gets two). With `ahead: false`
   * they all come from the counter now, and nothing is taken ahead.
   */
  async take(mailboxes: readonly MailboxId[], options: { readonly ahead?: boolean } = {}): Promise<Uid[]> {
    const ahead = options.ahead ?? true;
    const uids: Array<Uid | undefined> = mailboxes.map((id) => (ahead ? this.fromSpares(id) : undefined));
    const short = new Map<MailboxId, number>();
    mailboxes.forEach((id, i) => {
      if (uids[i] === undefined) short.set(id, (short.get(id) ?? 0) + 1);
    });
    if (short.size > 0) {
      const fresh = await this.refill(short, ahead);
      mailboxes.forEach((id, i) => {
        if (uids[i] === undefined) uids[i] = fresh.get(id)!.shift();
      });
    }
    return uids.map((uid, i) => {
      if (uid === undefined) throw new StoreError("unavailable", `postgres: no uid was taken for ${mailboxes[i]}`);
      return uid;
    });
  }

  /**
   * Drops what was taken ahead for these mailboxes: an import named one of those UIDs (and moved the
   * counter past it), so the next ones come fresh from the counter.
   */
  forget(mailboxes: Iterable<MailboxId>): void {
    for (const id of mailboxes) {
      const known = this.mailboxes.get(id);
      if (known !== undefined) known.ranges = [];
    }
  }

  private fromSpares(id: MailboxId): Uid | undefined {
    const ranges = this.mailboxes.get(id)?.ranges;
    const range = ranges?.[0];
    if (range === undefined) return undefined;
    const n = range[0];
    range[0] = n + 1n;
    if (range[0] === range[1]) ranges!.shift();
    return `u${n}`;
  }

  /** Takes what `needed` asks for plus each mailbox's spares in one statement; returns the needed ones. */
  private async refill(needed: ReadonlyMap<MailboxId, number>, ahead: boolean): Promise<Map<MailboxId, Uid[]>> {
    const now = this.now();
    const plan = new Map<MailboxId, { needed: number; spare: number }>();
    for (const [id, count] of needed) {
      const known = this.mailboxes.get(id);
      const busy = ahead && known !== undefined && now - known.refilledAt < BUSY_WITHIN_MS;
      const spare = busy ? Math.min(MAX_SPARE, Math.max(1, known.spare * 2)) : 0;
      plan.set(id, { needed: count, spare });
    }
    const ids = [...plan.keys()];
    // Spares outlive the statement in memory, so their step must be durable before they are used (see
    // deliverySql); a step without spares is made durable by the commit of the message that uses it.
    const keepsSpares = [...plan.values()].some((p) => p.spare > 0);
    const result = await this.db.query<{ id: string; next: string }>("take uids", this.sql.takeUids, [
      ids,
      ids.map((id) => plan.get(id)!.needed + plan.get(id)!.spare),
      keepsSpares ? "on" : "off",
    ]);
    const out = new Map<MailboxId, Uid[]>();
    for (const row of result.rows) {
      const step = plan.get(row.id);
      if (step === undefined) continue;
      const end = BigInt(row.next);
      let n = end - BigInt(step.needed + step.spare);
      const uids: Uid[] = [];
      for (let k = 0; k < step.needed; k++, n++) uids.push(`u${n}`);
      out.set(row.id, uids);
      this.keep(row.id, n, end, step.spare, now);
    }
    for (const id of ids) if (!out.has(id)) throw new StoreError("unavailable", `postgres: no uid was taken for ${id}`);
    return out;
  }

  private keep(id: MailboxId, from: bigint, to: bigint, spare: number, now: number): void {
    const known = this.mailboxes.get(id);
    const ranges = known?.ranges ?? [];
    if (from < to && ranges.length < MAX_RANGES) ranges.push([from, to]);
    // Re-inserted, so that the map's order is least recently refilled first.
    this.mailboxes.delete(id);
    this.mailboxes.set(id, { ranges, spare, refilledAt: now });
    if (this.mailboxes.size > MAX_MAILBOXES) this.mailboxes.delete(this.mailboxes.keys().next().value!);
  }
}
