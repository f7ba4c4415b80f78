import { promises as fsp, readFileSync } from "node:fs";
import { setImmediate } from "node:timers";
import { join } from "node:path";
import {
  StoreError,
  compareAge,
  compareDue,
  guardAppendSource,
  hasStoreErrorCode,
  isQueueId,
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
} from "@mailroom/store";
import type { StoreContext } from "./context.js";
import { attempt, fsError, isErrno } from "./errors.js";
import { PRIVATE_DIR, fsyncDir, makeDirs, readdirOrEmpty, uniqueSuffix, unlinkQuiet, withDirLock, writeFileAtomic } from "./fsutil.js";
import { asLeaseRecord, isLive, LEASE_FILE, LeaseManager, type LeaseRecord } from "./lease.js";
import { fileChunks } from "./streams.js";
import { openReadOnly } from "./fdio.js";
import { QueueIndex } from "./queueindex.js";
import { mapLimited } from "./concurrency.js";
import { writeMessageFile } from "./writing.js";

/**
 * The outbound queue on disk, next to the maildirs (a leading dot keeps it out of the domain
 * namespace, which never produces one):
 *
 *   <root>/.queue/items/<id>/message          the octets, written once and fsynced
 *   <root>/.queue/items/<id>/item.json        the QueueItem, replaced atomically on every change
 *   <root>/.queue/items/<id>/mailroom-lease   the claim: the mailbox lease file, made by LeaseManager
 *   <root>/.queue/tmp/<id>/                   an enqueue in progress
 *   <root>/.queue/trash/                      items on their way out
 *
 * An item appears by renaming its complete, fsynced directory from tmp/ into items/, so a reader sees
 * all of it or nothing. Claims reuse the mailbox lease (exclusive create, takeover of an expired one
 * under the `mailroom-lease.lock` mutex); every change that needs a claim takes that same mutex and
 * re-reads the lease file first, so a takeover cannot slip in between the check and the change.
 */
export const QUEUE_DIR = ".queue";
const ITEM_FILE = "item.json";
const MESSAGE_FILE = "message";
/** Used by `renew` for a claim that does not say its ttl (one a caller built by hand). */
const DEFAULT_TTL_MS = 60_000;
/** Leftovers of a crashed enqueue or removal older than this are swept. */
const LEFTOVER_MS = 60 * 60_000;
/** Item files read at once by a scan that reads asynchronously. */
const SCAN_READS = 16;
/** Item files a scan that reads synchronously reads between two turns of the event loop. */
const SYNC_SLICE = 256;
/** A claim scans every item at least this often, whatever the change markers say (see queueindex.ts). */
const RESCAN_MS = 60_000;

/** A JSON file's value, or null if it is gone; `sync` reads it with one synchronous call. */
async function readJson(path: string, sync = false): Promise<unknown> {
  try {
    return JSON.parse(sync ? readFileSync(path, "utf8") : await fsp.readFile(path, "utf8")) as unknown;
  } catch (error) {
    if (isErrno(error, "ENOENT", "ENOTDIR")) return null;
    throw error;
  }
}

function asItem(value: unknown, id: string): QueueItem | null {
  if (value === null || typeof value !== "object") return null;
  const v = value as QueueItem;
  if (v.id !== id || !Array.isArray(v.recipients)) return null;
  return v;
}

export class FsQueue implements Queue {
  private readonly base: string;
  private readonly items: string;
  private readonly tmp: string;
  private readonly trash: string;
  private swept = false;
  private readonly index: QueueIndex;

  constructor(private readonly ctx: StoreContext) {
    this.base = join(ctx.root, QUEUE_DIR);
    this.items = join(this.base, "items");
    this.tmp = join(this.base, "tmp");
    this.trash = join(this.base, "trash");
    this.index = new QueueIndex(join(this.base, "changes"), RESCAN_MS);
  }

  private dirOf(id: string): string {
    return join(this.items, id);
  }

  private async readItem(id: string, sync = false): Promise<QueueItem | null> {
    if (!isQueueId(id)) return null;
    const path = join(this.dirOf(id), ITEM_FILE);
    return asItem(await attempt("read queue item", path, () => readJson(path, sync)), id);
  }

  private async writeItem(item: QueueItem): Promise<void> {
    const path = join(this.dirOf(item.id), ITEM_FILE);
    await attempt("write queue item", path, () => writeFileAtomic(path, JSON.stringify(item), this.ctx.policy));
  }

  async enqueue(
    envelope: { readonly sender: string; readonly recipients: readonly string[]; readonly meta?: Readonly<Record<string, string>> },
    source: AsyncIterable<Uint8Array>,
    options: EnqueueOptions = {},
  ): Promise<QueueItem> {
    const now = Date.now();
    const id = newQueueId(now);
    await attempt("create queue", this.base, async () => {
      await makeDirs(this.tmp, this.ctx.policy);
      await makeDirs(this.items, this.ctx.policy);
    });
    const staging = join(this.tmp, id);
    // New mail keeps off the free-space reserve, as deliveries do, let through as it is written (see
    // reserve.ts); mail this server already acknowledged (a bounce) is counted, never refused.
    const meter = this.ctx.space?.meter(options.accepted !== true) ?? null;
    await attempt("create queue item", staging, () => fsp.mkdir(staging, PRIVATE_DIR));
    try {
      const { size } = await writeMessageFile(join(staging, MESSAGE_FILE), guardAppendSource(source, options), this.ctx.policy, now, undefined, meter);
      const item: QueueItem = {
        id,
        sender: envelope.sender,
        recipients: envelope.recipients.map((address) => ({ address, status: "pending" as const })),
        size,
        createdAt: now,
        attempts: 0,
        nextAttemptAt: options.notBefore ?? now,
        lastError: null,
        state: "queued",
        meta: { ...envelope.meta },
      };
      await attempt("write queue item", staging, () => writeFileAtomic(join(staging, ITEM_FILE), JSON.stringify(item), this.ctx.policy));
      await attempt("commit queue item", staging, () => fsp.rename(staging, this.dirOf(id)));
      await attempt("fsync", this.items, () => fsyncDir(this.items, this.ctx.policy));
      await this.index.changed(id, item);
      return item;
    } catch (error) {
      await fsp.rm(staging, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
  }

  list(): Promise<readonly QueueItem[]> {
    return this.index.markers().then((markers) => this.scan(markers));
  }

  /** Reads every item (after the change markers were read: see queueindex.ts), oldest first. */
  private async scan(markers: ReadonlyMap<string, string> | null): Promise<readonly QueueItem[]> {
    const started = this.index.begin();
    const ids = await attempt("list queue", this.items, () => readdirOrEmpty(this.items));
    // An item removed between readdir and read is simply not listed.
    const out = (await this.readItems(ids)).filter((item): item is QueueItem => item !== null);
    this.index.remember(out, markers, started, Date.now());
    return out.sort(compareAge);
  }

  /**
   * Reads many items. Item files are small and nearly always in the page cache, where the four
   * thread-pool round trips of an asynchronous read cost the event loop far more than the read (10,000
   * items took 1.8 s one after another); so, as for small messages (`syncReadBytes`), they are read
   * with synchronous calls, a slice at a time with a turn of the event loop between slices so that
   * sessions are not held up for long. With `syncReadBytes` 0 (slow or network file systems), they
   * are read asynchronously, several at once.
   */
  private async readItems(ids: readonly string[]): Promise<Array<QueueItem | null>> {
    if (this.ctx.syncReadBytes === 0) return mapLimited(ids, SCAN_READS, (id) => this.readItem(id));
    const out: Array<QueueItem | null> = [];
    for (let at = 0; at < ids.length; at += SYNC_SLICE) {
      if (at > 0) await new Promise((resolve) => setImmediate(resolve));
      for (const id of ids.slice(at, at + SYNC_SLICE)) out.push(await this.readItem(id, true));
    }
    return out;
  }

  get(id: string): Promise<QueueItem | null> {
    return this.readItem(id);
  }

  async delivering(): Promise<readonly string[]> {
    const ids = await attempt("list queue", this.items, () => readdirOrEmpty(this.items));
    const live = await mapLimited(ids, SCAN_READS, async (id) => {
      // A claim file that is half-written or unreadable is no delivery we can vouch for.
      const claim = asLeaseRecord(await readJson(join(this.dirOf(id), LEASE_FILE)).catch(() => null));
      return claim !== null && isLive(claim);
    });
    return ids.filter((_, i) => live[i]);
  }

  async readMessage(id: string): Promise<AsyncIterable<Uint8Array>> {
    const path = join(this.dirOf(id), MESSAGE_FILE);
    if (!isQueueId(id)) throw new StoreError("not-found", `maildir: no queue item ${JSON.stringify(id)}`);
    const fd = await attempt("open queued message", path, () => openReadOnly(path), { enoent: "not-found" });
    return fileChunks(fd, path);
  }

  async claim(options: ClaimOptions): Promise<readonly QueueClaim[]> {
    const now = options.now ?? Date.now();
    const limit = Math.max(0, options.limit ?? 1);
    if (!this.swept) {
      this.swept = true;
      await this.sweep();
    }
    // Without a change since the last scan, the items held from it are the queue as it is.
    const markers = await this.index.markers();
    const items = this.index.current(markers, Date.now()) ?? (await this.scan(markers));
    const due = items.filter((i) => i.state === "queued" && i.nextAttemptAt <= now).sort(compareDue);
    const claims: QueueClaim[] = [];
    for (const candidate of due) {
      if (claims.length >= limit) break;
      const dir = this.dirOf(candidate.id);
      // A live claim is skipped by a plain read, without the temp file and fsync of a failed acquire.
      const current = asLeaseRecord(await readJson(join(dir, LEASE_FILE)).catch(() => null));
      if (current && isLive(current)) continue;
      let lease;
      try {
        lease = await new LeaseManager(dir, candidate.id, this.ctx.policy).acquire({ holder: options.holder, ttlMs: options.ttlMs });
      } catch (error) {
        if (hasStoreErrorCode(error, "in-use")) continue;
        // Finished or removed by someone else since we listed it.
        if ((await this.readItem(candidate.id)) === null) continue;
        throw error;
      }
      // Our listing may be stale: someone may have rescheduled, dead-lettered or finished it since.
      const item = await this.readItem(candidate.id);
      if (!item || item.state !== "queued" || item.nextAttemptAt > now) {
        if (item) await lease.release();
        continue;
      }
      claims.push({ item, token: lease.token, expiresAt: lease.expiresAt, ttlMs: options.ttlMs });
    }
    return claims;
  }

  /**
   * Runs `body` under the item's lease mutex. With a claim, first checks that it is still the live
   * claim ("lease-lost" otherwise); without one (operator actions), that the item exists.
   */
  private async locked<T>(id: string, claim: QueueClaim | null, body: (dir: string, item: QueueItem) => Promise<T>): Promise<T> {
    const dir = this.dirOf(id);
    const gone = (): StoreError =>
      claim
        ? new StoreError("lease-lost", `maildir: claim on queue item ${id} is no longer held`)
        : new StoreError("not-found", `maildir: no queue item ${JSON.stringify(id)}`);
    if (!isQueueId(id) || (await this.readItem(id)) === null) throw gone();
    try {
      return await withDirLock(
        join(dir, `${LEASE_FILE}.lock`),
        async () => {
          const item = await this.readItem(id);
          if (!item) throw gone();
          if (claim) {
            const current = asLeaseRecord(await readJson(join(dir, LEASE_FILE)));
            if (!current || current.token !== claim.token || current.expiresAt <= Date.now()) throw gone();
          }
          return body(dir, item);
        },
        { staleMs: 5_000, waitMs: 10_000 },
      );
    } catch (error) {
      // The directory went away under us (finished or removed while we waited for the mutex).
      if (isErrno(error, "ENOENT", "ENOTDIR")) throw gone();
      throw fsError(error, "queue", dir);
    }
  }

  /**
   * Replaces the item and ends any claim on it, in that order, so nobody claims the old state.
   * `endClaim: false` leaves the claim file alone (see retry).
   */
  private async update(dir: string, item: QueueItem, endClaim = true): Promise<void> {
    await this.writeItem(item);
    await this.index.changed(item.id, item);
    if (!endClaim) return;
    await attempt("release claim", dir, async () => {
      if (await unlinkQuiet(join(dir, LEASE_FILE))) await fsyncDir(dir, this.ctx.policy);
    });
  }

  /** Moves the item out of items/ (one atomic rename), then deletes it at leisure. */
  private async discard(dir: string, id: string): Promise<string> {
    await attempt("create queue trash", this.trash, () => makeDirs(this.trash, this.ctx.policy));
    const aside = join(this.trash, `${id}.${uniqueSuffix()}`);
    await attempt("remove queue item", dir, () => fsp.rename(dir, aside));
    await attempt("fsync", this.items, () => fsyncDir(this.items, this.ctx.policy));
    await this.index.changed(id, null);
    return aside;
  }

  async renew(claim: QueueClaim): Promise<QueueClaim> {
    const ttlMs = claim.ttlMs ?? DEFAULT_TTL_MS;
    return this.locked(claim.item.id, claim, async (dir, item) => {
      const current = asLeaseRecord(await readJson(join(dir, LEASE_FILE)))!;
      const next: LeaseRecord = { ...current, expiresAt: Date.now() + ttlMs };
      await attempt("renew claim", dir, () => writeFileAtomic(join(dir, LEASE_FILE), JSON.stringify(next), this.ctx.policy));
      return { item, token: claim.token, expiresAt: next.expiresAt, ttlMs };
    });
  }

  async finish(claim: QueueClaim): Promise<void> {
    const aside = await this.locked(claim.item.id, claim, (dir) => this.discard(dir, claim.item.id));
    await fsp.rm(aside, { recursive: true, force: true }).catch(() => undefined);
  }

  async reschedule(claim: QueueClaim, options: RescheduleOptions): Promise<void> {
    await this.locked(claim.item.id, claim, (dir, item) =>
      this.update(dir, {
        ...item,
        attempts: item.attempts + 1,
        nextAttemptAt: options.nextAttemptAt,
        lastError: options.error,
        recipients: mergeRecipients(item.recipients, options.recipients),
        state: "queued",
      }),
    );
  }

  async deadLetter(claim: QueueClaim, options: { readonly error: string; readonly recipients?: readonly QueueRecipient[] }): Promise<void> {
    await this.locked(claim.item.id, claim, (dir, item) =>
      this.update(dir, {
        ...item,
        attempts: item.attempts + 1,
        lastError: options.error,
        recipients: mergeRecipients(item.recipients, options.recipients),
        state: "dead",
      }),
    );
  }

  async retry(id: string, options: RetryOptions = {}): Promise<RetryOutcome> {
    return this.locked(id, null, async (dir, item) => {
      // Under the claim mutex no claim is taken over or ends meanwhile, but a first claim (no claim
      // file yet) is made without it. So a claim file is removed only when this look found one
      // (ended, or broken on purpose): one created after the look belongs to a delivery that has
      // just begun, which ending would let a second worker send the message again.
      const claim = asLeaseRecord(await readJson(join(dir, LEASE_FILE)));
      if (claim && isLive(claim) && !options.breakClaim) return "in-delivery";
      await this.update(dir, { ...item, state: "queued", nextAttemptAt: Date.now() }, claim !== null);
      return "retried";
    });
  }

  async remove(id: string): Promise<void> {
    const aside = await this.locked(id, null, (dir) => this.discard(dir, id));
    await fsp.rm(aside, { recursive: true, force: true }).catch(() => undefined);
  }

  /** Best effort: removes what a crash left in tmp/ and trash/ a long time ago. */
  private async sweep(): Promise<void> {
    const cutoff = Date.now() - LEFTOVER_MS;
    await this.index.sweep(cutoff);
    for (const dir of [this.tmp, this.trash]) {
      for (const name of await readdirOrEmpty(dir).catch(() => [])) {
        const path = join(dir, name);
        try {
          if ((await fsp.stat(path)).mtimeMs < cutoff) await fsp.rm(path, { recursive: true, force: true });
        } catch {
          // Someone else swept it, or it is busy: next time.
        }
      }
    }
  }
}
