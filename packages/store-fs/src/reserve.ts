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
/**
 * Between measurements a process lets through at most this share of the headroom it measured (free
 * space above the reserve) before it measures again: each worker process has a reserve of its own
 * and cannot see what the others let through, so with up to this many on one file system their
 * shares together stay within the headroom.
 */
const SHARE = 4;
/**
 * A process that used up its share measures again, but not sooner than this after the last
 * measurement (statfs at most twenty times a second): what comes meanwhile waits for it.
 */
const MIN_GAP_MS = 50;
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
  readonly minGapMs?: number;
  /**
   * The share of the headroom let through between measurements is 1/`share` (default 4, see SHARE).
   * Tests set 1 to see the arithmetic of one process alone.
   */
  readonly share?: number;
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
 * ones. Octets count as let through and unseen until their write has completed (a known-size message
 * until `landed`, a metered one until `SpaceMeter.wrote`): a measurement taken before cannot have seen
 * them.
 *
 * Several worker processes on one file system each keep a reserve of their own and do not see what
 * the others let through, so each lets through at most a quarter of the headroom it measured (free
 * space above the reserve) before it measures again (no sooner than 50 ms after the last
 * measurement; what comes meanwhile waits). With up to four such processes the reserve holds between
 * measurements; with more, they can together let through more than the headroom, by up to a quarter
 * of it for each process beyond the fourth, before the next measurements see it. On a large disk
 * with little headroom used this costs nothing: a quarter of it is not reached within a second.
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
   * Octets let through ahead of their writing and not written yet (an admit until `landed`, a meter's
   * steps until `wrote`): a measurement cannot have seen them, so they stay charged across it.
   */
  private ahead = 0;
  /** Octets let through (and not given back) since the last measurement: this process's share used. */
  private since = 0;
  /** How much may be let through between measurements: a share of the headroom last measured. */
  private quota = Infinity;
  /** A statfs is on its way: what lands now may or may not be in its answer. */
  private statting = false;
  /** Octets that landed while a statfs was on its way: counted as unseen by it. */
  private meanwhile = 0;
  private measuredAt = -Infinity;
  private measuring: Promise<void> | null = null;
  private warned = false;
  private readonly fitToDisk: boolean;
  private readonly now: () => number;
  private readonly maxAgeMs: number;
  private readonly minGapMs: number;
  private readonly share: number;

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
    this.minGapMs = options.minGapMs ?? MIN_GAP_MS;
    this.share = options.share ?? SHARE;
  }

  /** Octets kept free as of the last measurement. */
  get kept(): number {
    return this.keep;
  }

  /**
   * Lets a message file of `octets` through, with `alongside` octets appended to a file that already
   * exists (the delivery log's record), or throws "no-space". Returns the octets it charged, which
   * the caller MUST hand to `landed` exactly once when the writes that carry them have completed or
   * failed (in a `finally`; not when admit threw): until then no measurement can have seen them, so
   * they stay charged across it. Returns a promise only when a new measurement has to be waited for;
   * otherwise it decides at once, without a system call or an allocation. With `refuse` false (mail
   * already acknowledged) it only counts the octets, and never waits.
   */
  admit(octets: number, alongside = 0, refuse = true): number | Promise<number> {
    const amount = this.blocks(octets) + alongside;
    const taken = this.takeAhead(amount, refuse);
    return taken === undefined ? amount : taken.then(() => amount);
  }

  /**
   * The writes carrying `octets` an `admit` returned have completed (or failed): from now on a
   * measurement sees them, and they count as let through until the next one.
   */
  landed(octets: number): void {
    this.ahead -= octets;
    // A statfs already on its way may have looked before they landed: counted as unseen by it.
    if (this.statting) this.meanwhile += octets;
  }

  /**
   * Whether new mail of `octets` would be let through now, without letting anything through: for a
   * refusal before the message is sent (SMTP MAIL FROM with SIZE=). Measures first if the last
   * measurement is stale; never throws.
   */
  hasRoom(octets: number): boolean | Promise<boolean> {
    if (this.fresh() && this.decidable(this.blocks(octets))) return this.roomFor(octets);
    return this.measure().then(() => this.roomFor(octets));
  }

  /**
   * Lets a message of unknown size through as `writeMessageFile` writes it: each step is decided (or
   * counted, with `refuse` false) before the octets it covers are written, and told (`wrote`) when
   * their write has completed. Closed once the file is written or removed (`writeMessageFile` does):
   * what was let through and not written is given back.
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

  /**
   * @internal A meter closes: `unwritten` octets let through ahead will never be written, and
   * `change` more (the file's last block) or fewer (a file that was removed) stay taken.
   */
  settle(unwritten: number, change: number): void {
    this.ahead -= unwritten;
    this.charged -= unwritten - change;
    // Given back from this process's share too (not below nothing: they may be from before the last
    // measurement).
    this.since = Math.max(0, this.since - (unwritten - change));
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

  /**
   * Whether the last measurement may decide on `amount`: it refuses it, or it is within this
   * process's share since that measurement (the first one after a measurement always is, however
   * large: it is decided against that measurement).
   */
  private decidable(amount: number): boolean {
    return this.since === 0 || this.since + amount <= this.quota || this.free - this.charged - amount < this.keep;
  }

  private take(amount: number, refuse: boolean): Promise<void> | undefined {
    if (!refuse) {
      this.charged += amount;
      this.since += amount;
      return undefined;
    }
    if (this.fresh() && this.decidable(amount)) {
      this.decide(amount);
      return undefined;
    }
    return this.measure().then(() => this.retake(amount));
  }

  /** After a measurement: decided against it, unless those decided before used up the share again. */
  private retake(amount: number): Promise<void> | undefined {
    if (this.decidable(amount)) {
      this.decide(amount);
      return undefined;
    }
    return this.measure().then(() => this.retake(amount));
  }

  private decide(amount: number): void {
    if (this.free - this.charged - amount < this.keep) {
      throw new StoreError(
        "no-space",
        `maildir: refusing new mail: ${Math.max(0, Math.floor((this.free - this.charged) / 1048576))} MiB free on the store's file system, ${Math.ceil(this.keep / 1048576)} MiB kept in reserve (min_free_mb)`,
      );
    }
    this.charged += amount;
    this.since += amount;
  }

  /** One measurement at a time; everyone who needs a fresh one waits for the same. */
  private measure(): Promise<void> {
    this.measuring ??= this.nextMeasurement().finally(() => {
      this.measuring = null;
    });
    return this.measuring;
  }

  private async nextMeasurement(): Promise<void> {
    // A share used up within MIN_GAP_MS of the last measurement waits for the gap to pass, rather than
    // being decided from a number the other processes may have made stale (or statfs run per message).
    const wait = this.minGapMs - (this.now() - this.measuredAt);
    if (wait > 0 && wait <= this.minGapMs) await new Promise((resolve) => setTimeout(resolve, wait));
    await this.takeMeasurement();
  }

  private async takeMeasurement(): Promise<void> {
    const started = this.now();
    // What is let through from here on (only acknowledged mail: new mail waits for this measurement)
    // counts against the next share.
    const sinceBefore = this.since;
    this.statting = true;
    this.meanwhile = 0;
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
    } finally {
      this.statting = false;
    }
    // What landed before is in the answer, and new mail is not let through while a measurement runs:
    // it waits for it. What was let through and has not landed (its write not completed) is not in
    // it, nor perhaps what landed while the statfs was on its way.
    this.charged = this.ahead + this.meanwhile;
    this.meanwhile = 0;
    this.since = Math.max(0, this.since - sinceBefore);
    this.quota = Math.max(0, this.free - this.keep) / this.share;
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
  /** Octets handed to the write loop (gathered, perhaps not written yet). */
  private passed = 0;
  /** Octets whose write completed (see `wrote`). */
  private landed = 0;
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
      return undefined;
    }
    const step = this.reserve.blocks(Math.max(this.step, passed - this.allowed));
    this.step = Math.min(this.step * 2, MAX_STEP);
    const taken = this.reserve.takeAhead(step, this.refuse);
    if (taken === undefined) {
      this.allowed += step;
      this.passed = passed;
      return undefined;
    }
    return taken.then(() => {
      this.allowed += step;
      this.passed = passed;
    });
  }

  /**
   * The write that carries `octets` (handed over by `add` before) has completed: a measurement may see
   * them from now on. Until then they stay charged across measurements, also while they sit in a
   * gathering buffer.
   */
  wrote(octets: number): void {
    this.landed += octets;
    this.reserve.landed(octets);
  }

  /**
   * The file is written, or given up: gives back what was let through and not written (what `wrote`
   * did not report), and with `removed` (the file is gone) what was written too, so that a refused
   * message does not stand in the way of the others until the next measurement. Idempotent.
   */
  close(removed = false): void {
    if (!this.open) return;
    this.open = false;
    this.reserve.settle(this.allowed - this.landed, removed ? -this.landed : this.reserve.blocks(this.landed) - this.landed);
  }
}
