import { promises as fsp } from "node:fs";
import { StoreError, type Logger } from "@mailroom/store";

/** Octets an unprivileged user may still write on the file system holding `path`, and its block size. */
export type FreeSpace = (path: string) => Promise<{ readonly free: number; readonly blockSize: number }>;

/** How long one measurement stands in for the file system's free space. */
const MAX_AGE_MS = 1_000;

type StatFs = (path: string) => Promise<{ bavail: number; bsize: number }>;

/**
 * `fs.promises.statfs` where the runtime has it (Node 18.15 and later; not every runtime's node:fs
 * does), else null.
 */
export function statfsFreeSpace(): FreeSpace | null {
  const statfs = (fsp as { statfs?: StatFs }).statfs;
  if (typeof statfs !== "function") return null;
  return async (path) => {
    // bavail, not bfree: blocks the file system keeps for root (ext4's 5 %) are not ours to count on.
    const info = await statfs.call(fsp, path);
    return { free: Number(info.bavail) * Number(info.bsize), blockSize: Number(info.bsize) || 4096 };
  };
}

/**
 * Keeps the last `reserve` octets of the store's file system for what must go on working when the
 * disk is nearly full: POP3 leases, expunge journals, state files, the delivery log's retirement.
 * New mail (deliveries, appends, enqueues) is refused with "no-space" (SMTP 452 4.3.1, the sender
 * tries again later) once it would eat into them, as Postfix refuses mail below `queue_minfree`.
 *
 * Free space is measured at most once a second, not per message: a delivery on the hot path pays a
 * clock read and a comparison. What was let through since the last measurement is subtracted from
 * it, so a burst of mail within that second cannot run past the reserve either.
 */
export class SpaceReserve {
  /** Free octets at the last measurement (Infinity: not measured, or it failed). */
  private free = Infinity;
  private blockSize = 4096;
  /** Octets let through since the measurement in `free` started. */
  private charged = 0;
  private measuredAt = -Infinity;
  private measuring: Promise<void> | null = null;
  private warned = false;

  constructor(
    private readonly path: string,
    /** Octets to keep free; more than 0. */
    readonly reserve: number,
    private readonly freeSpace: FreeSpace,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
    private readonly maxAgeMs = MAX_AGE_MS,
  ) {}

  /**
   * Lets a message file of `octets` through (0 before its size is known), with `alongside` octets
   * appended to a file that already exists (the delivery log's record), or throws "no-space".
   * Returns a promise only when the last measurement is too old and a new one has to be waited for;
   * otherwise it decides at once, without a system call.
   */
  admit(octets: number, alongside = 0): Promise<void> | undefined {
    if (this.now() - this.measuredAt < this.maxAgeMs) {
      this.decide(octets, alongside);
      return undefined;
    }
    return this.measure().then(() => this.decide(octets, alongside));
  }

  private decide(octets: number, alongside: number): void {
    // A file takes whole blocks; a hard link to the same file in more mailboxes takes none.
    const blocks = Math.ceil(octets / this.blockSize) * this.blockSize + alongside;
    const left = this.free - this.charged - blocks;
    if (left < this.reserve) {
      throw new StoreError(
        "no-space",
        `maildir: refusing new mail: ${Math.max(0, Math.floor((this.free - this.charged) / 1048576))} MiB free on the store's file system, ${Math.ceil(this.reserve / 1048576)} MiB kept in reserve (min_free_mb)`,
      );
    }
    this.charged += blocks;
  }

  /** One measurement at a time; everyone who needs a fresh one waits for the same. */
  private measure(): Promise<void> {
    this.measuring ??= this.takeMeasurement().finally(() => {
      this.measuring = null;
    });
    return this.measuring;
  }

  private async takeMeasurement(): Promise<void> {
    const started = this.now();
    try {
      const { free, blockSize } = await this.freeSpace(this.path);
      this.free = free;
      this.blockSize = blockSize > 0 ? blockSize : 4096;
    } catch (error) {
      // Mail is not refused for want of a number: the disk itself still says ENOSPC when it is full.
      this.free = Infinity;
      if (!this.warned) {
        this.warned = true;
        this.logger.warn({ path: this.path, error: error instanceof Error ? error.message : String(error) }, "maildir: cannot measure free space (statfs failed); min_free_mb is not enforced while it fails");
      }
    }
    // What was let through before is in the answer (but for a message or two still being written;
    // nobody is let through while a measurement runs: they all wait for it).
    this.charged = 0;
    this.measuredAt = started;
  }
}
