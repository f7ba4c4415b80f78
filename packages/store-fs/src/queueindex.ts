import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { QueueItem } from "@mailroom/store";
import { isErrno } from "./errors.js";
import { PRIVATE_DIR, PRIVATE_FILE, readdirOrEmpty } from "./fsutil.js";

/**
 * What `claim` knows of the queue between full scans.
 *
 * A claim has to find the due items, and the items live one directory each; reading every item.json
 * on every claim made a backlog expensive: with 10,000 deferred items (a remote domain down for a
 * day) each claim read 10,000 files, about 1.3 s, and the delivery worker claims every second. Now a
 * claim scans only when something may have changed since the last scan; otherwise it filters the
 * items it already holds, with no file read at all.
 *
 * "Something changed" is told by marker files in `.queue/changes/`, one per queue instance (any
 * process: the server's workers, a `mailroom queue` command): after every change an instance makes to
 * an item (enqueue, reschedule, dead-letter, retry, finish, remove), it rewrites its own marker with a
 * new count. A claim reads the markers (a handful of tiny files) before it scans and compares them
 * with what they said at its last scan; any difference (a marker changed, appeared or went) means a
 * scan. Its own changes it applies to what it holds directly. Each instance writes only its own
 * marker, so no two writers race on one file, and a marker is written after the change it announces,
 * so a scan that starts after reading the markers sees every change they announce.
 *
 * The index only ever decides which items to try: a claim still takes the item's lease and re-reads
 * item.json under it, so a stale entry costs a wasted try, never a wrong delivery. The markers are
 * hints, not state: they are not fsynced, and after a crash a process starts with nothing held.
 * Whatever slips past them (a process killed between its change and its marker) is picked up by the
 * full scan that runs at least every `maxAgeMs` regardless.
 */
/** What a claim needs of an item to find the due ones (a few dozen octets, not the whole item). */
export type QueueEntry = Pick<QueueItem, "id" | "state" | "nextAttemptAt" | "createdAt">;

const entryOf = (item: QueueItem): QueueEntry => ({
  id: item.id,
  state: item.state,
  nextAttemptAt: item.nextAttemptAt,
  createdAt: item.createdAt,
});

export class QueueIndex {
  private readonly own = `${process.pid}-${randomBytes(6).toString("hex")}`;
  private ownCount = 0;
  private held: Map<string, QueueEntry> | null = null;
  private heldMarkers = new Map<string, string>();
  private scannedAt = 0;

  constructor(
    private readonly dir: string,
    private readonly maxAgeMs: number,
  ) {}

  /** The other instances' markers, name → content; null if they cannot be read (then scan, and do not trust it). */
  async markers(): Promise<Map<string, string> | null> {
    const found = new Map<string, string>();
    try {
      for (const name of await readdirOrEmpty(this.dir)) {
        if (name === this.own) continue;
        try {
          found.set(name, await fsp.readFile(join(this.dir, name), "utf8"));
        } catch (error) {
          // Swept between the listing and the read: as if it had not been listed.
          if (!isErrno(error, "ENOENT")) throw error;
        }
      }
    } catch {
      return null;
    }
    return found;
  }

  /** Markers not rewritten since `cutoff` (their instances are gone or idle): removed, best effort. */
  async sweep(cutoff: number): Promise<void> {
    for (const name of await readdirOrEmpty(this.dir).catch(() => [])) {
      if (name === this.own) continue;
      const path = join(this.dir, name);
      try {
        if ((await fsp.stat(path)).mtimeMs < cutoff) await fsp.unlink(path);
      } catch {
        // Gone already, or next time.
      }
    }
  }

  /**
   * The items as of now if nothing changed since the last scan, or null if a scan is needed. Call
   * `markers()` first and hand its result here, and to `remember` after the scan.
   */
  current(markers: ReadonlyMap<string, string> | null, now: number): readonly QueueEntry[] | null {
    if (markers === null || this.held === null || now - this.scannedAt >= this.maxAgeMs) return null;
    if (markers.size !== this.heldMarkers.size) return null;
    for (const [name, content] of markers) if (this.heldMarkers.get(name) !== content) return null;
    return [...this.held.values()];
  }

  /** Where a scan starts: the own change count, to tell whether a change overlapped the scan. */
  begin(): number {
    return this.ownCount;
  }

  /** Takes a full scan's items; dropped if this instance changed an item meanwhile (the scan may miss it). */
  remember(items: readonly QueueItem[], markers: ReadonlyMap<string, string> | null, started: number, now: number): void {
    if (markers === null || started !== this.ownCount) {
      this.held = null;
      return;
    }
    this.held = new Map(items.map((item) => [item.id, entryOf(item)]));
    this.heldMarkers = new Map(markers);
    this.scannedAt = now;
  }

  /**
   * After this instance changed item `id` (now `item`, or gone for null): updates what is held and tells
   * the other instances. Never throws: the change is already made, and a marker that could not be
   * written only delays the others until their next full scan.
   */
  async changed(id: string, item: QueueItem | null): Promise<void> {
    this.ownCount++;
    if (this.held !== null) {
      if (item === null) this.held.delete(id);
      else this.held.set(id, entryOf(item));
    }
    try {
      await fsp.mkdir(this.dir, { recursive: true, mode: PRIVATE_DIR });
      await fsp.writeFile(join(this.dir, this.own), String(this.ownCount), { mode: PRIVATE_FILE });
    } catch {
      // See above.
    }
  }
}
