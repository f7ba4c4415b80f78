import { randomUUID } from "node:crypto";
import {
  parseProcessStamp,
  processHasEnded,
  processStamp,
  StoreError,
  type Lease,
  type LeaseOptions,
  type MailboxId,
} from "@mailroom/store";
import type pg from "pg";
import type { Db } from "./db.js";
import { tsToMs } from "./schema.js";

/**
 * Leases are rows, not advisory locks: a row outlives the connection that wrote it (pool churn, a
 * database restart, a transaction-mode pooler all keep it), it expires by the database clock so hosts
 * with skewed clocks agree, and `SELECT * FROM leases` shows who holds what. The token is the fence:
 * every write that needs the lease re-checks it in its own transaction. The `owner` column names the
 * holding process: a lease whose process has certainly ended (judged on this machine, see
 * `processHasEnded`) is taken over at once, by its token, instead of after its expiry.
 */
export function leaseSql(s: string) {
  return {
    acquire: `
      INSERT INTO ${s}.leases AS l (mailbox, token, holder, expires_at, owner)
      VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond', $5)
      ON CONFLICT (mailbox) DO UPDATE
        SET token = EXCLUDED.token, holder = EXCLUDED.holder, acquired_at = now(), expires_at = EXCLUDED.expires_at,
            owner = EXCLUDED.owner
        WHERE l.expires_at <= now() OR l.token = $6
      RETURNING ${tsToMs("expires_at")} AS expires_at`,
    holder: `SELECT holder, token, owner FROM ${s}.leases WHERE mailbox = $1`,
    renew: `
      UPDATE ${s}.leases SET expires_at = now() + $3::bigint * interval '1 millisecond'
      WHERE mailbox = $1 AND token = $2 AND expires_at > now()
      RETURNING ${tsToMs("expires_at")} AS expires_at`,
    release: `DELETE FROM ${s}.leases WHERE mailbox = $1 AND token = $2`,
    // FOR UPDATE holds the row until our transaction ends, so a takeover waits for our write to commit
    // instead of slipping in between the check and the commit.
    fence: `SELECT 1 FROM ${s}.leases WHERE mailbox = $1 AND token = $2 AND expires_at > now() FOR UPDATE`,
  };
}

export type LeaseSql = ReturnType<typeof leaseSql>;

/** Inside a transaction: fails with "lease-lost" unless `lease` is still the live lease of `mailbox`. */
export async function checkFence(client: pg.PoolClient, sql: LeaseSql, mailbox: MailboxId, lease: Lease): Promise<void> {
  if (lease.mailbox !== mailbox) {
    throw new StoreError("lease-lost", `postgres: the lease is for ${lease.mailbox}, not ${mailbox}`);
  }
  const held = await client.query(sql.fence, [mailbox, lease.token]);
  if (held.rowCount === 0) {
    throw new StoreError("lease-lost", `postgres: lease on ${mailbox} expired or was taken over`);
  }
}

export async function acquireLease(db: Db, sql: LeaseSql, mailbox: MailboxId, options: LeaseOptions): Promise<Lease> {
  const ttl = Math.max(0, Math.ceil(options.ttlMs));
  const token = randomUUID();
  const stamp = processStamp();
  const owner = stamp ? JSON.stringify(stamp) : null;
  const take = (ended: string | null) =>
    db.query<{ expires_at: number }>("acquire lease", sql.acquire, [mailbox, token, options.holder, ttl, owner, ended]);
  let row = (await take(null)).rows[0];
  if (!row) {
    const other = (await db.query<{ holder: string; token: string; owner: string | null }>("acquire lease", sql.holder, [mailbox])).rows[0];
    // Replaced only if it is still the lease judged here: a successor that got in meanwhile is live.
    if (other && processHasEnded(parseProcessStamp(other.owner))) row = (await take(other.token)).rows[0];
    if (!row) {
      const by = other?.holder;
      throw new StoreError("in-use", `postgres: ${mailbox} is in use${by === undefined ? "" : ` by ${by}`}`);
    }
  }
  let expiresAt = row.expires_at;
  return {
    mailbox,
    token,
    holder: options.holder,
    get expiresAt() {
      return expiresAt;
    },
    async renew() {
      const renewed = await db.query<{ expires_at: number }>("renew lease", sql.renew, [mailbox, token, ttl]);
      const r = renewed.rows[0];
      if (!r) throw new StoreError("lease-lost", `postgres: lease on ${mailbox} expired or was taken over`);
      expiresAt = r.expires_at;
    },
    async release() {
      await db.query("release lease", sql.release, [mailbox, token]);
    },
  };
}
