import { openSync, promises as fsp } from "node:fs";
import { basename, dirname, join, sep } from "node:path";
import {
  StoreError,
  assertUid,
  hasStoreErrorCode,
  guardAppendSource,
  takeTop,
  type AppendOptions,
  type Lease,
  type LeaseOptions,
  type Mailbox,
  type MailboxId,
  type MessageInfo,
  type ReadOptions,
  type Uid,
} from "@mailroom/store";
import { JsonFile, type FileFacts, type MailboxCache, type StoreContext } from "./context.js";
import { attempt, causedByErrno, fsError, isErrno } from "./errors.js";
import { compareArrival, messageName, newBase, parseName, uidOfBase, withSeenFlag, type ParsedName } from "./filenames.js";
import { fsyncDir, makeDirs, readTextOrNull, readdirOrEmpty, unlinkQuiet, withDirLock, writeFileAtomic } from "./fsutil.js";
import { ID_FILE } from "./layout.js";
import { LeaseManager } from "./lease.js";
import { crlfSizeOf, fileChunks, toCrlf } from "./streams.js";
import { mapLimited } from "./concurrency.js";
import { writeMessageFile } from "./writing.js";
import { closeFd, openReadOnly } from "./fdio.js";

/** Thrown by `facts` for an entry of new/ or cur/ that is not a regular file; the scan skips it. */
class NotAMessageFile extends Error {
  constructor(path: string) {
    super(`maildir: ${path} is not a regular file`);
  }
}

export const STATE_FILE = "mailroom-state.json";
export const JOURNAL_FILE = "mailroom-expunge.journal";
export const SIZES_FILE = "mailroom-sizes.json";
const STATE_LOCK = "mailroom-state.lock";
/** The Maildir spec's limit: a tmp/ file this old was left by a crashed delivery. */
const STALE_TMP_MS = 36 * 3600 * 1000;

interface Journal {
  readonly gen: number;
  readonly bases: ReadonlySet<string>;
}

interface MailboxState {
  /** First retrieval time per UID. */
  retrieved: Record<string, number>;
}

function parseState(raw: unknown): MailboxState {
  const retrieved: Record<string, number> = {};
  const source = (raw as { retrieved?: unknown } | null)?.retrieved;
  if (source && typeof source === "object") {
    for (const [uid, value] of Object.entries(source)) if (typeof value === "number") retrieved[uid] = value;
  }
  return { retrieved };
}

/** One message file found by a scan. */
export interface Found {
  readonly uid: Uid;
  readonly parsed: ParsedName;
  readonly sub: "new" | "cur";
  readonly path: string;
  readonly facts: FileFacts;
}

export class FsMailbox implements Mailbox {
  readonly dir: string;
  private readonly hashed: boolean;
  // Made on first use: a delivery opens a mailbox only to write one file into it, and building these
  // for every message was a measurable share of its CPU.
  private leaseManager: LeaseManager | undefined;
  private stateFile: JsonFile<MailboxState> | undefined;
  private caches: MailboxCache | undefined;

  constructor(
    private readonly ctx: StoreContext,
    readonly id: MailboxId,
  ) {
    const location = ctx.locate(id);
    this.dir = location.dir;
    this.hashed = location.hashed;
  }

  private get leases(): LeaseManager {
    return (this.leaseManager ??= new LeaseManager(this.dir, this.id, this.ctx.policy));
  }

  private get state(): JsonFile<MailboxState> {
    return (this.stateFile ??= new JsonFile(join(this.dir, STATE_FILE), parseState, () => ({ retrieved: {} })));
  }

  private get cache(): MailboxCache {
    return (this.caches ??= this.ctx.cache.get(this.dir));
  }

  /** `<dir>/<name>[/<file>]` by concatenation: every part is ours or a directory entry, so there is nothing to normalise. */
  private sub(name: "new" | "cur" | "tmp", file?: string): string {
    return file === undefined ? `${this.dir}${sep}${name}` : `${this.dir}${sep}${name}${sep}${file}`;
  }

  /** Creates the maildir on first write and cleans crash leftovers in tmp/ once per store instance. */
  async ensureDirs(): Promise<void> {
    if (this.ctx.prepared.has(this.dir)) return;
    await attempt("create mailbox", this.dir, async () => {
      await makeDirs(this.dir, this.ctx.policy, this.ctx.mailModes.dir);
      if (this.hashed && (await readTextOrNull(join(this.dir, ID_FILE))) === null) {
        await writeFileAtomic(join(this.dir, ID_FILE), this.id, this.ctx.policy);
      }
      for (const sub of ["tmp", "new", "cur"] as const) await makeDirs(this.sub(sub), this.ctx.policy, this.ctx.mailModes.dir);
    });
    await this.cleanTmp();
    this.ctx.prepared.add(this.dir);
  }

  private async cleanTmp(): Promise<void> {
    const cutoff = Date.now() - STALE_TMP_MS;
    try {
      for (const name of await readdirOrEmpty(this.sub("tmp"))) {
        const path = this.sub("tmp", name);
        const info = await fsp.stat(path).catch(() => null);
        // An append in progress may already have set an old mtime (receivedAt) on its tmp file, so our
        // own files are aged by the time in their name. (ctime cannot tell: setting mtime resets it.)
        const parsed = parseName(name);
        const born = parsed?.ours ? parsed.sec * 1000 : info?.mtimeMs ?? 0;
        if (info?.isFile() && born < cutoff && (await unlinkQuiet(path))) {
          this.ctx.logger.info({ mailbox: this.id, file: name }, "maildir: removed stale tmp file");
        }
      }
      // Temp files of our small atomic writes that a crash left next to the real ones.
      const hourAgo = Date.now() - 3600 * 1000;
      for (const name of await readdirOrEmpty(this.dir)) {
        if (!/^mailroom-.*\.(tmp|new)-\d+\.[0-9a-f]+$/.test(name)) continue;
        const path = join(this.dir, name);
        const info = await fsp.stat(path).catch(() => null);
        if (info?.isFile() && info.mtimeMs < hourAgo) await unlinkQuiet(path);
      }
    } catch (error) {
      this.ctx.logger.warn({ mailbox: this.id, err: String(error) }, "maildir: could not clean tmp/");
    }
  }

  private withStateLock<T>(body: () => Promise<T>): Promise<T> {
    return withDirLock(join(this.dir, STATE_LOCK), body);
  }

  private async facts(parsed: ParsedName, path: string): Promise<FileFacts> {
    const known = this.cache.facts.get(parsed.base);
    if (known) return known;
    const info = await fsp.stat(path);
    // A directory or a FIFO someone made in new/ or cur/ is no message: reading it would fail the
    // whole listing, or block a pool thread forever.
    if (!info.isFile()) throw new NotAMessageFile(path);
    const receivedAt = Math.round(info.mtimeMs);
    let facts: FileFacts;
    if (parsed.ours) {
      facts = { receivedAt, size: info.size, convert: false };
    } else if (parsed.crlfSize !== undefined) {
      facts = { receivedAt, size: parsed.crlfSize, convert: parsed.crlfSize !== info.size };
    } else {
      const sizes = await this.crlfSizes();
      let size = sizes.get(parsed.base);
      if (size === undefined) {
        size = await crlfSizeOf(path);
        sizes.set(parsed.base, size);
        this.cache.crlfSizesDirty = true;
      }
      facts = { receivedAt, size, convert: size !== info.size };
    }
    this.cache.facts.set(parsed.base, facts);
    return facts;
  }

  /**
   * Sizes that took a full read of a foreign file to learn. Kept in a cache file so that a restart does
   * not read a whole Postfix-delivered mailbox again; losing or corrupting it only costs that read.
   */
  private async crlfSizes(): Promise<Map<string, number>> {
    if (this.cache.crlfSizes) return this.cache.crlfSizes;
    const sizes = new Map<string, number>();
    try {
      const raw = JSON.parse((await readTextOrNull(join(this.dir, SIZES_FILE))) ?? "{}") as Record<string, unknown>;
      for (const [base, size] of Object.entries(raw)) if (typeof size === "number") sizes.set(base, size);
    } catch {
      // an unreadable cache is an empty one
    }
    this.cache.crlfSizes = sizes;
    return sizes;
  }

  private async saveCrlfSizes(live: ReadonlySet<string>): Promise<void> {
    const sizes = this.cache.crlfSizes;
    if (!sizes || !this.cache.crlfSizesDirty) return;
    this.cache.crlfSizesDirty = false;
    for (const base of sizes.keys()) if (!live.has(base)) sizes.delete(base);
    try {
      await writeFileAtomic(join(this.dir, SIZES_FILE), JSON.stringify(Object.fromEntries(sizes)), { fsync: false });
    } catch (error) {
      this.ctx.logger.debug({ mailbox: this.id, err: String(error) }, "maildir: could not save the size cache");
    }
  }

  /**
   * The expunge journal. It stays in place between expunges: `gen` counts them, and `bases` is non-empty
   * only while one is in progress (or was cut short by a crash).
   */
  private async journal(): Promise<Journal> {
    const text = await readTextOrNull(join(this.dir, JOURNAL_FILE));
    if (text === null) return { gen: 0, bases: new Set() };
    try {
      const value = JSON.parse(text) as { gen?: unknown; bases?: unknown };
      const bases = Array.isArray(value.bases) ? value.bases.filter((b): b is string => typeof b === "string") : [];
      return { gen: typeof value.gen === "number" ? value.gen : 0, bases: new Set(bases) };
    } catch {
      // A journal is only renamed into place complete; garbage here was never ours to act on.
      return { gen: 0, bases: new Set() };
    }
  }

  /**
   * All message files in arrival order, one readdir of new/ and cur/ each. Messages named in a pending
   * expunge journal are left out, and a listing that overlapped an expunge (the journal's generation
   * moved meanwhile) is taken again, so an expunge is seen all at once or not at all.
   */
  async scan(): Promise<Found[]> {
    for (let round = 0; ; round++) {
      const before = await this.journal();
      // new/ strictly before cur/: a message moving new/ → cur/ meanwhile is then seen in one of them.
      const fresh = await readdirOrEmpty(this.sub("new"));
      const current = await readdirOrEmpty(this.sub("cur"));
      const after = await this.journal();
      if (before.gen !== after.gen && round < 5) continue;
      const hidden = new Set([...before.bases, ...after.bases]);
      const byBase = new Map<string, { parsed: ParsedName; sub: "new" | "cur" }>();
      for (const [sub, names] of [["new", fresh], ["cur", current]] as const) {
        for (const name of names) {
          const parsed = parseName(name);
          // cur/ wins: a file moved between the two readdirs shows up in both.
          if (parsed && !hidden.has(parsed.base)) byBase.set(parsed.base, { parsed, sub });
        }
      }
      const entries = [...byBase.values()].sort((a, b) => compareArrival(a.parsed, b.parsed));
      let vanished = false;
      const found = await mapLimited(entries, 32, async ({ parsed, sub }) => {
        const path = this.sub(sub, parsed.name);
        try {
          return { uid: uidOfBase(parsed.base), parsed, sub, path, facts: await this.facts(parsed, path) };
        } catch (error) {
          if (error instanceof NotAMessageFile) return null;
          if (!isErrno(error, "ENOENT")) throw error;
          vanished = true;
          return null;
        }
      });
      // Another client renamed or deleted a file under our feet: look again, a few times at most.
      if (vanished && round < 3) continue;
      const seen = new Set<string>();
      const out: Found[] = [];
      for (const item of found) {
        if (!item || seen.has(item.uid)) continue;
        seen.add(item.uid);
        out.push(item);
      }
      this.cache.paths = new Map(out.map((f) => [f.uid, { path: f.path, base: f.parsed.base }]));
      const live = new Set(out.map((f) => f.parsed.base));
      await this.saveCrlfSizes(live);
      if (this.cache.facts.size > out.length * 2 + 64) {
        for (const base of this.cache.facts.keys()) if (!live.has(base)) this.cache.facts.delete(base);
      }
      return out;
    }
  }

  async append(source: AsyncIterable<Uint8Array>, options: AppendOptions = {}): Promise<MessageInfo> {
    if (options.uid !== undefined) assertUid(options.uid);
    await this.ensureDirs();
    const uid = options.uid;
    if (uid !== undefined) {
      const present = await attempt("list", this.dir, () => this.scan());
      if (present.some((f) => f.uid === uid)) {
        throw new StoreError("exists", `maildir: uid ${uid} already in mailbox ${this.id}`);
      }
    }
    const base = newBase(this.ctx.host, uid);
    const temp = this.sub("tmp", base);
    const stamp = options.receivedAt === undefined ? undefined : Math.round(options.receivedAt);
    // New mail keeps off the free-space reserve, as deliveries do, let through as it is written
    // (see reserve.ts); a refusal removes the file.
    const meter = this.ctx.space?.meter() ?? null;
    const { size, crlfSize, receivedAt } = await writeMessageFile(temp, guardAppendSource(source, options), this.ctx.policy, stamp, this.ctx.mailModes.file, meter);
    const retrievedAt = options.retrievedAt ?? null;
    const final =
      retrievedAt === null
        ? this.sub("new", messageName(base, size, crlfSize, null))
        : this.sub("cur", messageName(base, size, crlfSize, "S"));
    const info: MessageInfo = { uid: uid ?? uidOfBase(base), size, receivedAt, retrievedAt };
    const publish = async (): Promise<void> => {
      // Checked again at the last moment, under the state lock, so two imports of one UID cannot both win.
      if (uid !== undefined && (await this.scan()).some((f) => f.uid === uid)) {
        throw new StoreError("exists", `maildir: uid ${uid} already in mailbox ${this.id}`);
      }
      if (retrievedAt !== null) await this.writeRetrieved(new Map([[info.uid, retrievedAt]]));
      // A rename, as Dovecot does: one operation instead of link + unlink, and the generated name
      // (time, pid, counter, 64 random bits) cannot already exist, so nothing is ever replaced.
      await fsp.rename(temp, final);
      // Group commit: shares one fsync of new/ with the appends running next to this one.
      await this.ctx.dirSyncs.sync(dirname(final));
    };
    try {
      await attempt("deliver", final, () =>
        uid !== undefined || retrievedAt !== null ? this.withStateLock(publish) : publish(),
      );
    } catch (error) {
      if (!hasStoreErrorCode(error, "exists")) await unlinkQuiet(final).catch(() => undefined);
      await unlinkQuiet(temp).catch(() => undefined);
      throw error;
    }
    this.cache.facts.set(base, { receivedAt, size, convert: false });
    this.cache.paths.set(info.uid, { path: final, base });
    return info;
  }

  /**
   * Adds first-retrieval times (never overwriting one) and drops entries of UIDs outside `keep`.
   * The caller holds the state lock.
   */
  private async writeRetrieved(times: ReadonlyMap<Uid, number>, keep?: ReadonlySet<Uid>): Promise<void> {
    this.state.invalidate();
    const current = await this.state.load();
    const retrieved: Record<string, number> = {};
    for (const [u, t] of Object.entries(current.retrieved)) if (!keep || keep.has(u)) retrieved[u] = t;
    for (const [u, t] of times) retrieved[u] ??= t;
    await writeFileAtomic(this.state.path, JSON.stringify({ version: 1, retrieved }), this.ctx.policy);
    this.state.invalidate();
  }

  async list(): Promise<readonly MessageInfo[]> {
    return attempt("list", this.dir, async () => {
      if ((await this.journal()).bases.size > 0 && !(await this.leases.held())) {
        await this.withStateLock(() => this.rollForward());
      }
      const [found, state] = await Promise.all([this.scan(), this.state.load()]);
      return found.map((f) => ({
        uid: f.uid,
        size: f.facts.size,
        receivedAt: f.facts.receivedAt,
        retrievedAt: state.retrieved[f.uid] ?? null,
      }));
    });
  }

  async read(uid: Uid, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const notFound = () => new StoreError("not-found", `maildir: no message ${uid} in ${this.id}`);
    for (let round = 0; round < 4; round++) {
      // The path from the last scan is tried first: a POP3 session reads message after message, and a
      // readdir per RETR would make fetching a large mailbox quadratic.
      let known = round === 0 ? this.cache.paths.get(uid) : undefined;
      if (!known) {
        const found = (await attempt("list", this.dir, () => this.scan())).find((f) => f.uid === uid);
        if (!found) throw notFound();
        known = { path: found.path, base: found.parsed.base };
      }
      let facts = this.cache.facts.get(known.base);
      // A message known to be small is read with synchronous calls: it is nearly always in the page
      // cache, and the three thread-pool round trips of open, read and close cost more than the read.
      const sync = facts !== undefined && facts.size <= this.ctx.syncReadBytes;
      let fd: number;
      try {
        fd = sync ? openSync(known.path, "r") : await openReadOnly(known.path);
      } catch (error) {
        // Renamed (flags) or deleted by another client since the scan: look again.
        if (isErrno(error, "ENOENT")) continue;
        throw fsError(error, "open", known.path);
      }
      if (!facts) {
        const parsed = parseName(basename(known.path));
        try {
          facts = parsed ? await this.facts(parsed, known.path) : undefined;
        } catch (error) {
          await closeFd(fd).catch(() => undefined);
          throw fsError(error, "read", known.path);
        }
      }
      let stream = fileChunks(fd, known.path, facts?.size, sync);
      if (facts?.convert) stream = toCrlf(stream);
      return options.bodyLines === undefined ? stream : takeTop(stream, options.bodyLines);
    }
    throw notFound();
  }

  /** Carries out the journal's pending deletions (a crash's leftover, or our own). State lock held. */
  private async rollForward(recovering = true): Promise<number> {
    const { gen, bases } = await this.journal();
    if (bases.size === 0) return 0;
    // new/ before cur/: a message another client moves from new/ to cur/ meanwhile is then found in
    // one of them. Within each, several removals at once, and the two directories flushed together:
    // under load each file call waits its turn in a thread pool busy with fsyncs, and a QUIT that
    // deleted thirty messages one call after another waited seconds.
    const flush = new Set<string>();
    let removed = 0;
    // Another Maildir reader (Dovecot setting a flag) may rename a file between our listing and its
    // unlink; the unlink then finds nothing and the message would stay under its new name. Whatever
    // was not found is looked for again, a few rounds at most (a round ends when nothing is missed).
    for (let round = 0; round < 5; round++) {
      let missed = false;
      for (const sub of ["new", "cur"] as const) {
        const doomed = (await readdirOrEmpty(this.sub(sub))).filter((name) => bases.has(parseName(name)?.base ?? ""));
        const gone = (await mapLimited(doomed, 16, (name) => unlinkQuiet(this.sub(sub, name)))).filter(Boolean).length;
        removed += gone;
        if (gone < doomed.length) missed = true;
        // A recovery also flushes a directory it found nothing to remove in: a crashed process's
        // removals may still be waiting in the page cache.
        if (gone > 0 || recovering) flush.add(this.sub(sub));
      }
      if (!missed) break;
    }
    await Promise.all([...flush].map((dir) => fsyncDir(dir, this.ctx.policy)));
    // Cleared without an fsync: should a power cut bring the old list back, carrying it out again
    // finds nothing to remove (the removals above are durable), so only the flushes are saved.
    await writeFileAtomic(join(this.dir, JOURNAL_FILE), JSON.stringify({ gen, bases: [] }), { fsync: false });
    for (const base of bases) this.cache.facts.delete(base);
    if (recovering && removed > 0) this.ctx.logger.info({ mailbox: this.id, removed }, "maildir: finished an interrupted expunge");
    return removed;
  }

  async expunge(uids: readonly Uid[], lease: Lease): Promise<number> {
    await this.leases.check(lease);
    // Mail still recorded in the delivery log is made durable and the log retired first: a replay
    // after a power cut must not bring back what this expunge removes. Mail whose log was retired
    // already needs no wait (see DeliveryLog.covers). Only this instance's logs are known here: a
    // message another process (another worker) logged can still come back after a power cut in the
    // second after its delivery (README, "Limits").
    if (this.ctx.deliveryLog?.covers(uids)) await attempt("expunge", this.dir, () => this.ctx.deliveryLog!.checkpoint());
    const wanted = new Set(uids);
    return attempt("expunge", this.dir, () =>
      this.withStateLock(async () => {
        await this.rollForward();
        await this.leases.check(lease);
        const targets = (await this.scan()).filter((f) => wanted.has(f.uid));
        if (targets.length === 0) return 0;
        // Journal first: once it is durable, the deletion will complete, if need be after a crash.
        const bases = targets.map((f) => f.parsed.base);
        // The state file also marks "this mailbox held mail" for listMailboxes once it is empty.
        if ((await readTextOrNull(this.state.path)) === null) {
          await writeFileAtomic(this.state.path, JSON.stringify({ version: 1, retrieved: {} }), this.ctx.policy);
        }
        const gen = (await this.journal()).gen + 1;
        await writeFileAtomic(join(this.dir, JOURNAL_FILE), JSON.stringify({ gen, bases }), this.ctx.policy);
        await this.rollForward(false);
        return targets.length;
      }),
    );
  }

  async markRetrieved(uids: readonly Uid[], lease: Lease): Promise<void> {
    await this.leases.check(lease);
    const wanted = new Set(uids);
    await attempt("mark retrieved", this.dir, () =>
      this.withStateLock(async () => {
        // Scanned under the lock: pruning the state to the listed UIDs must not drop an entry that an
        // append with retrievedAt is adding right now.
        const found = await this.scan();
        const targets = found.filter((f) => wanted.has(f.uid));
        if (targets.length === 0) return;
        await this.leases.check(lease);
        const now = Date.now();
        await this.writeRetrieved(
          new Map(targets.map((f) => [f.uid, now])),
          new Set(found.map((f) => f.uid)),
        );
        // The standard "seen" move, so other Maildir readers agree the message was fetched.
        let moved = false;
        for (const f of targets) {
          if (f.sub === "cur" && f.parsed.flags.includes("S")) continue;
          try {
            await fsp.rename(f.path, this.sub("cur", withSeenFlag(f.parsed)));
            moved = true;
          } catch (error) {
            if (!isErrno(error, "ENOENT")) throw error;
          }
        }
        if (moved) {
          // The new name first: on a file system without a journal, a power cut between the two
          // flushes must leave the message listed twice (new/ and cur/ name one file) rather than
          // in neither, which would hand it to fsck's lost+found.
          await fsyncDir(this.sub("cur"), this.ctx.policy);
          await fsyncDir(this.sub("new"), this.ctx.policy);
        }
      }),
    );
  }

  /**
   * Forgets that this maildir was made: an operator may remove it under a running server (a reset,
   * or a user deleted and added again), and the next write must make it again, as Postfix and
   * Dovecot do, instead of failing until a restart.
   */
  forgetDirs(): void {
    this.ctx.prepared.delete(this.dir);
  }

  async acquireLease(options: LeaseOptions): Promise<Lease> {
    await this.ensureDirs();
    let lease: Lease;
    try {
      lease = await this.leases.acquire(options);
    } catch (error) {
      if (!causedByErrno(error, "ENOENT")) throw error;
      this.forgetDirs();
      await this.ensureDirs();
      lease = await this.leases.acquire(options);
    }
    try {
      if ((await this.journal()).bases.size > 0) await this.withStateLock(() => this.rollForward());
    } catch (error) {
      await lease.release().catch(() => undefined);
      throw fsError(error, "expunge recovery", this.dir);
    }
    return lease;
  }
}
