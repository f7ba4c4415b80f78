import { promises as fsp } from "node:fs";
import { performance } from "node:perf_hooks";
import { StoreError, type Logger } from "@mailroom/store";

/**
 * Octets an unprivileged user may still write on the file system holding `path`, its block size, and
 * (where known) the file system's size in octets.
 */
export type FreeSpace = (path: string) => Promise<{ readonly free: number; readonly blockSize: number; readonly size?: number }>;

/** How long one measurement stands in for the file system's free space. */
const MAX_AGE_MS = 1_000;
/** The default reserve is at most this share of the file system (1/16: 4 MiB of a 64 MiB tmpfs). */
const DEFAULT_SHARE = 16;
/**
 * A message of unknown size is let through ahead of its writing, this much first (one write batch, so
 * a message just over the delivery log's size asks once), then twice as much each time, up to
 * MAX_STEP: few decisions for a large message, and little set aside for a small one while it is
 * written.
 */
const FIRST_STEP = 128 * 1024;
const MAX_STEP = 1024 * 1024;

type StatFs = (path: string) => Promise<{ bavail: number; bsize: number; blocks: number }>;

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
    const bsize = Number(info.bsize);
    return { free: Number(info.bavail) * bsize, blockSize: bsize || 4096, size: Number(info.blocks) * bsize };
  };
}

export interface SpaceReserveOptions {
  /**
   * Keep at most a sixteenth of the file system, decided at each measurement: for the default reserve,
   * which must not refuse all mail on a small file system. A reserve the operator set is kept as given.
   */
  readonly fitToDisk?: boolean;
  /**
   * A monotonic clock in milliseconds for the measurement's age (tests inject one). Not the wall
   * clock: stepped back, that would make the last measurement look fresh for as long as the step.
   */
  readonly now?: () => number;
  readonly maxAgeMs?: number;
}

/**
 * Keeps the last `reserve` octets of the store's file system for what must go on working when the
 * disk is nearly full: POP3 leases, expunge journals, state files, the delivery log's retirement.
 * New mail (deliveries, appends, enqueues) is refused with "no-space" (SMTP 452 4.3.1, the sender
 * tries again later) once it would eat into them, as Postfix refuses mail below `queue_minfree`.
 * Mail this server already acknowledged (`accepted`) is counted, never refused.
 *
 * Free space is measured at most once a second, not per message: a delivery on the hot path pays a
 * clock read and a comparison. What was let through since the last measurement is subtracted from
 * it, so a burst of mail within that second cannot run past the reserve either; a message of unknown
 * size is let through step by step as it is written (see `meter`), so neither can a burst of large
 * ones.
 */
export class SpaceReserve {
  /** Free octets at the last measurement (Infinity: not measured, or it failed). */
  private free = Infinity;
  private blockSize = 4096;
  /** Octets to keep: `reserve`, or less on a small file system when `fitToDisk`. */
  private keep: number;
  /** Octets let through since the measurement in `free` (set-aside steps of meters included). */
  private charged = 0;
  /**
   * Octets let through to meters ahead of their writing and not written yet: a measurement cannot
   * have seen them, so they stay charged across it.
   */
  private ahead = 0;
  private measuredAt = -Infinity;
  private measuring: Promise<void> | null = null;
  private warned = false;
  private readonly fitToDisk: boolean;
  private readonly now: () => number;
  private readonly maxAgeMs: number;

  constructor(
    private readonly path: string,
    /** Octets to keep free; more than 0. */
    readonly reserve: number,
    private readonly freeSpace: FreeSpace,
    private readonly logger: Logger,
    options: SpaceReserveOptions = {},
  ) {
    this.keep = reserve;
    this.fitToDisk = options.fitToDisk ?? false;
    this.now = options.now ?? (() => performance.now());
    this.maxAgeMs = options.maxAgeMs ?? MAX_AGE_MS;
  }

  /** Octets kept free as of the last measurement. */
  get kept(): number {
    return this.keep;
  }

  /**
   * Lets a message file of `octets` through (0 before its size is known), with `alongside` octets
   * appended to a file that already exists (the delivery log's record), or throws "no-space".
   * Returns a promise only when the last measurement is too old and a new one has to be waited for;
   * otherwise it decides at once, without a system call. With `refuse` false (mail already
   * acknowledged) it only counts the octets, and never waits.
   */
  admit(octets: number, alongside = 0, refuse = true): Promise<void> | undefined {
    return this.take(this.blocks(octets) + alongside, refuse);
  }

  /**
   * Whether new mail of `octets` would be let through now, without letting anything through: for a
   * refusal before the message is sent (SMTP MAIL FROM with SIZE=). Measures first if the last
   * measurement is stale; never throws.
   */
  hasRoom(octets: number): boolean | Promise<boolean> {
    if (this.fresh()) return this.roomFor(octets);
    return this.measure().then(() => this.roomFor(octets));
  }

  /**
   * Lets a message of unknown size through as `writeMessageFile` writes it: each step is decided (or
   * counted, with `refuse` false) before the octets it covers are written. Closed once the file is
   * written or removed (`writeMessageFile` does): what was let through and not written is given back.
   */
  meter(refuse = true): SpaceMeter {
    return new SpaceMeter(this, refuse);
  }

  /** @internal The meter's way in: `octets` let through ahead of their writing. */
  takeAhead(octets: number, refuse: boolean): Promise<void> | undefined {
    const taken = this.take(octets, refuse);
    if (taken === undefined) {
      this.ahead += octets;
      return undefined;
    }
    return taken.then(() => {
      this.ahead += octets;
    });
  }

  /** @internal `octets` let through ahead were written (a measurement may see them from now on). */
  written(octets: number): void {
    this.ahead -= octets;
  }

  /**
   * @internal A meter closes: `unwritten` octets let through ahead will never be written, and
   * `change` more (the file's last block) or fewer (a file that was removed) stay taken.
   */
  settle(unwritten: number, change: number): void {
    this.ahead -= unwritten;
    this.charged -= unwritten - change;
  }

  /** @internal `octets` in whole blocks of the file system (as of the last measurement). */
  blocks(octets: number): number {
    // A file takes whole blocks; a hard link to the same file in more mailboxes takes none.
    return Math.ceil(octets / this.blockSize) * this.blockSize;
  }

  private fresh(): boolean {
    // A clock that went backwards (it should not, being monotonic) counts as stale, never as fresh.
    const age = this.now() - this.measuredAt;
    return age >= 0 && age < this.maxAgeMs;
  }

  private roomFor(octets: number): boolean {
    return this.free - this.charged - this.blocks(octets) >= this.keep;
  }

  private take(amount: number, refuse: boolean): Promise<void> | undefined {
    if (!refuse) {
      this.charged += amount;
      return undefined;
    }
    if (this.fresh()) {
      this.decide(amount);
      return undefined;
    }
    return this.measure().then(() => this.decide(amount));
  }

  private decide(amount: number): void {
    if (this.free - this.charged - amount < this.keep) {
      throw new StoreError(
        "no-space",
        `maildir: refusing new mail: ${Math.max(0, Math.floor((this.free - this.charged) / 1048576))} MiB free on the store's file system, ${Math.ceil(this.keep / 1048576)} MiB kept in reserve (min_free_mb)`,
      );
    }
    this.charged += amount;
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
      const { free, blockSize, size } = await this.freeSpace(this.path);
      this.free = free;
      this.blockSize = blockSize > 0 ? blockSize : 4096;
      if (this.fitToDisk && size !== undefined && size > 0) this.keep = Math.min(this.reserve, Math.floor(size / DEFAULT_SHARE));
    } catch (error) {
      // Mail is not refused for want of a number: the disk itself still says ENOSPC when it is full.
      this.free = Infinity;
      if (!this.warned) {
        this.warned = true;
        this.logger.warn({ path: this.path, error: error instanceof Error ? error.message : String(error) }, "maildir: cannot measure free space (statfs failed); min_free_mb is not enforced while it fails");
      }
    }
    // What was written before is in the answer (but for a write batch or two still on its way), and
    // nobody else is let through while a measurement runs: they all wait for it. What meters were
    // let through ahead and have not written yet is not in it.
    this.charged = this.ahead;
    this.measuredAt = started;
  }
}

/**
 * One message of unknown size, let through as it is written (see `SpaceReserve.meter`). `add` is on
 * the write loop's path for every chunk: a sum and a comparison, and a decision (nearly always without
 * a wait) only every step.
 */
export class SpaceMeter {
  /** Octets let through so far, ahead of the writing. */
  private allowed = 0;
  /** Octets written (or about to be: handed to the write loop). */
  private passed = 0;
  private step = FIRST_STEP;
  private open = true;

  constructor(
    private readonly reserve: SpaceReserve,
    private readonly refuse: boolean,
  ) {}

  /**
   * Before `octets` more are written: undefined when they were let through already, else (once a
   * step) the decision on the next step, which may be a promise (a measurement is due) and may refuse
   * with "no-space".
   */
  add(octets: number): Promise<void> | undefined {
    const passed = this.passed + octets;
    if (passed <= this.allowed) {
      this.passed = passed;
      this.reserve.written(octets);
      return undefined;
    }
    const step = this.reserve.blocks(Math.max(this.step, passed - this.allowed));
    this.step = Math.min(this.step * 2, MAX_STEP);
    const taken = this.reserve.takeAhead(step, this.refuse);
    if (taken === undefined) {
      this.allowed += step;
      this.passed = passed;
      this.reserve.written(octets);
      return undefined;
    }
    return taken.then(() => {
      this.allowed += step;
      this.passed = passed;
      this.reserve.written(octets);
    });
  }

  /**
   * The file is written, or given up: gives back what was let through and not written, and with
   * `removed` (the file is gone) what was written too, so that a refused message does not stand in the
   * way of the others until the next measurement. Idempotent.
   */
  close(removed = false): void {
    if (!this.open) return;
    this.open = false;
    this.reserve.settle(this.allowed - this.passed, removed ? -this.passed : this.reserve.blocks(this.passed) - this.passed);
  }
}
