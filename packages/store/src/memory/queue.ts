/**
 * The reference outbound queue: items live in a Map shared by every instance of one namespace, so a
 * second instance behaves like a second server process (claims exclude each other) and like a restart.
 * Every mutation happens synchronously after its checks, which is what makes it atomic here.
 */
import { randomUUID } from "node:crypto";
import { StoreError } from "../errors.js";
import {
  compareAge,
  compareDue,
  mergeRecipients,
  newQueueId,
  type ClaimOptions,
  type EnqueueOptions,
  type Queue,
  type QueueClaim,
  type QueueItem,
  type QueueRecipient,
  type RescheduleOptions,
  type RetryOptions,
  type RetryOutcome,
} from "../queue.js";
import { fromBytes, guardAppendSource, readAll } from "../streams.js";

interface ClaimState {
  token: string;
  holder: string;
  expiresAt: number;
  ttlMs: number;
}

interface Entry {
  item: QueueItem;
  data: Uint8Array;
  claim: ClaimState | null;
}

export interface QueueState {
  readonly entries: Map<string, Entry>;
}

export function newQueueState(): QueueState {
  return { entries: new Map() };
}

export class MemoryQueue implements Queue {
  constructor(private readonly state: QueueState) {}

  async enqueue(
    envelope: { readonly sender: string; readonly recipients: readonly string[]; readonly meta?: Readonly<Record<string, string>> },
    source: AsyncIterable<Uint8Array>,
    options: EnqueueOptions = {},
  ): Promise<QueueItem> {
    const data = await readAll(guardAppendSource(source, options));
    const now = Date.now();
    let id = newQueueId(now);
    while (this.state.entries.has(id)) id = newQueueId(now);
    const item: QueueItem = {
      id,
      sender: envelope.sender,
      recipients: envelope.recipients.map((address) => ({ address, status: "pending" as const })),
      size: data.length,
      createdAt: now,
      attempts: 0,
      nextAttemptAt: options.notBefore ?? now,
      lastError: null,
      state: "queued",
      meta: { ...envelope.meta },
    };
    this.state.entries.set(id, { item, data, claim: null });
    return item;
  }

  async claim(options: ClaimOptions): Promise<readonly QueueClaim[]> {
    const now = options.now ?? Date.now();
    const limit = options.limit ?? 1;
    const clock = Date.now();
    const due = [...this.state.entries.values()]
      .filter((e) => e.item.state === "queued" && e.item.nextAttemptAt <= now && !(e.claim && e.claim.expiresAt > clock))
      .sort((a, b) => compareDue(a.item, b.item))
      .slice(0, Math.max(0, limit));
    return due.map((entry) => {
      const claim: ClaimState = { token: randomUUID(), holder: options.holder, expiresAt: clock + options.ttlMs, ttlMs: options.ttlMs };
      entry.claim = claim;
      return { item: entry.item, token: claim.token, expiresAt: claim.expiresAt, ttlMs: claim.ttlMs };
    });
  }

  /** The entry whose live claim this is, or "lease-lost". */
  private held(claim: QueueClaim): Entry {
    const entry = this.state.entries.get(claim.item.id);
    if (!entry || !entry.claim || entry.claim.token !== claim.token || entry.claim.expiresAt <= Date.now()) {
      throw new StoreError("lease-lost", `memory: claim on queue item ${claim.item.id} is no longer held`);
    }
    return entry;
  }

  async renew(claim: QueueClaim): Promise<QueueClaim> {
    const entry = this.held(claim);
    const state = entry.claim!;
    state.expiresAt = Date.now() + state.ttlMs;
    return { item: entry.item, token: state.token, expiresAt: state.expiresAt, ttlMs: state.ttlMs };
  }

  async readMessage(id: string): Promise<AsyncIterable<Uint8Array>> {
    const entry = this.state.entries.get(id);
    if (!entry) throw new StoreError("not-found", `memory: no queue item ${id}`);
    return fromBytes(entry.data);
  }

  async finish(claim: QueueClaim): Promise<void> {
    this.held(claim);
    this.state.entries.delete(claim.item.id);
  }

  async reschedule(claim: QueueClaim, options: RescheduleOptions): Promise<void> {
    const entry = this.held(claim);
    entry.item = this.attempted(entry.item, options.error, options.recipients, {
      nextAttemptAt: options.nextAttemptAt,
      state: "queued",
    });
    entry.claim = null;
  }

  async deadLetter(claim: QueueClaim, options: { readonly error: string; readonly recipients?: readonly QueueRecipient[] }): Promise<void> {
    const entry = this.held(claim);
    entry.item = this.attempted(entry.item, options.error, options.recipients, { state: "dead" });
    entry.claim = null;
  }

  private attempted(
    item: QueueItem,
    error: string,
    recipients: readonly QueueRecipient[] | undefined,
    change: Partial<Pick<QueueItem, "nextAttemptAt" | "state">>,
  ): QueueItem {
    return {
      ...item,
      ...change,
      attempts: item.attempts + 1,
      lastError: error,
      recipients: mergeRecipients(item.recipients, recipients),
    };
  }

  async list(): Promise<readonly QueueItem[]> {
    return [...this.state.entries.values()].map((e) => e.item).sort(compareAge);
  }

  async delivering(): Promise<readonly string[]> {
    const now = Date.now();
    return [...this.state.entries.values()].filter((e) => e.claim !== null && e.claim.expiresAt > now).map((e) => e.item.id);
  }

  async get(id: string): Promise<QueueItem | null> {
    return this.state.entries.get(id)?.item ?? null;
  }

  async retry(id: string, options: RetryOptions = {}): Promise<RetryOutcome> {
    const entry = this.state.entries.get(id);
    if (!entry) throw new StoreError("not-found", `memory: no queue item ${id}`);
    if (entry.claim && entry.claim.expiresAt > Date.now() && !options.breakClaim) return "in-delivery";
    entry.item = { ...entry.item, state: "queued", nextAttemptAt: Date.now() };
    entry.claim = null;
    return "retried";
  }

  async remove(id: string): Promise<void> {
    if (!this.state.entries.delete(id)) throw new StoreError("not-found", `memory: no queue item ${id}`);
  }
}
