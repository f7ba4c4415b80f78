import { promises as fsp } from "node:fs";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import {
  parseProcessStamp,
  processHasEnded,
  processStamp,
  StoreError,
  type Lease,
  type LeaseOptions,
  type MailboxId,
  type ProcessStamp,
} from "@mailroom/store";
import { attempt, isErrno } from "./errors.js";
import { PRIVATE_FILE, fsyncDir, uniqueSuffix, unlinkQuiet, withDirLock, writeFileAtomic, type SyncPolicy } from "./fsutil.js";

/**
 * The mailbox lease is the file `<maildir>/mailroom-lease` holding `{token, holder, expiresAt}`.
 *
 * - A free mailbox is taken by hard-linking a complete, fsynced file into place: link() fails with
 *   EEXIST if anyone else got there first, and nobody ever sees a half-written lease.
 * - Every later change (taking over an expired lease, renew, release) happens under the short mkdir
 *   mutex `mailroom-lease.lock` and re-reads the file first, so two processes never both replace it.
 * - The file also names the process that holds it (`owner`, Linux only). A lease whose process has
 *   certainly ended is taken over at once, as Dovecot does with its lock files: after `kill -9` or a
 *   crash, a client that reconnects gets its mailbox back without waiting out the TTL.
 */
export const LEASE_FILE = "mailroom-lease";

/** What a lease file holds; queue claims (queue.ts) are the same file. */
export interface LeaseRecord {
  token: string;
  holder: string;
  expiresAt: number;
  owner?: ProcessStamp;
}

/** The record a parsed lease file holds, or null if it holds none. */
export function asLeaseRecord(value: unknown): LeaseRecord | null {
  if (value === null || typeof value !== "object") return null;
  const v = value as Partial<LeaseRecord>;
  if (typeof v.token !== "string" || typeof v.expiresAt !== "number") return null;
  const owner = parseProcessStamp(v.owner);
  return { token: v.token, holder: String(v.holder ?? ""), expiresAt: v.expiresAt, ...(owner ? { owner } : {}) };
}

/** A lease that protects its holder: not expired, and its process (where this one can tell) alive. */
export function isLive(record: LeaseRecord, now = Date.now()): boolean {
  return record.expiresAt > now && !processHasEnded(record.owner ?? null);
}

async function readLease(path: string): Promise<LeaseRecord | null> {
  let text: string;
  try {
    text = await fsp.readFile(path, "utf8");
  } catch (error) {
    if (isErrno(error, "ENOENT")) return null;
    throw error;
  }
  try {
    const record = asLeaseRecord(JSON.parse(text));
    if (record) return record;
  } catch {
    // fall through: an unreadable lease protects nobody, treat it as expired
  }
  return { token: "", holder: "?", expiresAt: 0 };
}

async function createExclusive(path: string, record: LeaseRecord, policy: SyncPolicy): Promise<boolean> {
  const temp = `${path}.new-${uniqueSuffix()}`;
  const handle = await fsp.open(temp, "wx", PRIVATE_FILE);
  try {
    await handle.writeFile(JSON.stringify(record));
    if (policy.fsync) await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fsp.link(temp, path);
  } catch (error) {
    if (isErrno(error, "EEXIST")) return false;
    if (!isErrno(error, "EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS")) throw error;
    // No hard links here (some FUSE and SMB mounts): O_EXCL create is still race-free.
    try {
      await fsp.writeFile(path, JSON.stringify(record), { flag: "wx", mode: PRIVATE_FILE });
    } catch (inner) {
      if (isErrno(inner, "EEXIST")) return false;
      throw inner;
    }
  } finally {
    await unlinkQuiet(temp);
  }
  await fsyncDir(join(path, ".."), policy);
  return true;
}

export class LeaseManager {
  private readonly path: string;
  private readonly mutex: string;

  constructor(
    private readonly dir: string,
    private readonly mailbox: MailboxId,
    private readonly policy: SyncPolicy,
  ) {
    this.path = join(dir, LEASE_FILE);
    this.mutex = join(dir, `${LEASE_FILE}.lock`);
  }

  private locked<T>(body: () => Promise<T>): Promise<T> {
    return withDirLock(this.mutex, body, { staleMs: 5_000, waitMs: 10_000 });
  }

  async acquire(options: LeaseOptions): Promise<Lease> {
    return attempt("lease", this.dir, async () => {
      for (let round = 0; round < 10; round++) {
        const owner = processStamp();
        const record: LeaseRecord = {
          token: randomUUID(),
          holder: options.holder,
          expiresAt: Date.now() + options.ttlMs,
          ...(owner ? { owner } : {}),
        };
        if (await createExclusive(this.path, record, this.policy)) return this.handle(record, options.ttlMs);
        const current = await readLease(this.path);
        if (current === null) continue;
        if (isLive(current)) throw this.inUse(current);
        const outcome = await this.locked(async () => {
          const again = await readLease(this.path);
          if (again === null) return "retry" as const;
          if (isLive(again)) return again;
          record.expiresAt = Date.now() + options.ttlMs;
          await writeFileAtomic(this.path, JSON.stringify(record), this.policy);
          return "taken" as const;
        });
        if (outcome === "taken") return this.handle(record, options.ttlMs);
        if (outcome !== "retry") throw this.inUse(outcome);
      }
      throw new StoreError("temporary", `maildir: could not settle the lease on ${this.mailbox}`);
    });
  }

  /** Throws "lease-lost" unless `lease` is the live lease of this mailbox. */
  async check(lease: Lease): Promise<void> {
    const current = await attempt("lease check", this.dir, () => readLease(this.path));
    if (!current || current.token !== lease.token || current.expiresAt <= Date.now()) {
      throw new StoreError("lease-lost", `maildir: lease on ${this.mailbox} is no longer held`);
    }
  }

  /** True when somebody holds a live lease (used to decide whether a leftover journal is orphaned). */
  async held(): Promise<boolean> {
    const current = await readLease(this.path);
    return current !== null && isLive(current);
  }

  private inUse(current: LeaseRecord): StoreError {
    return new StoreError("in-use", `maildir: ${this.mailbox} is in use by ${current.holder || "another session"}`);
  }

  private handle(record: LeaseRecord, ttlMs: number): Lease {
    const manager = this;
    const mine = { ...record };
    let released = false;
    return {
      mailbox: this.mailbox,
      token: mine.token,
      holder: mine.holder,
      get expiresAt() {
        return mine.expiresAt;
      },
      async renew() {
        await attempt("lease renew", manager.dir, () =>
          manager.locked(async () => {
            const current = released ? null : await readLease(manager.path);
            if (!current || current.token !== mine.token) {
              throw new StoreError("lease-lost", `maildir: lease on ${manager.mailbox} was lost`);
            }
            const next = { ...mine, expiresAt: Date.now() + ttlMs };
            await writeFileAtomic(manager.path, JSON.stringify(next), manager.policy);
            mine.expiresAt = next.expiresAt;
          }),
        );
      },
      async release() {
        if (released) return;
        released = true;
        await attempt("lease release", manager.dir, () =>
          manager.locked(async () => {
            const current = await readLease(manager.path);
            if (current?.token !== mine.token) return;
            await unlinkQuiet(manager.path);
            await fsyncDir(manager.dir, manager.policy);
          }),
        );
      },
    };
  }
}
