import { randomUUID } from "node:crypto";
import {
  StoreError,
  assertUid,
  parseProcessStamp,
  processHasEnded,
  processStamp,
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
import { afterDurableWrite, call, runScript, type Context } from "./context.js";
import type { DirectoryKeys, MailboxKeys } from "./keys.js";
import { MailboxStaging, allocateUid, commit, firstChunk, parseInfo, readChunks, stageAll } from "./messages.js";

/** A counter value the scripts handle exactly: digits, below 2^53 (Lua's numbers are doubles). */
function isCounterValue(text: string): boolean {
  return /^[1-9][0-9]{0,15}$/.test(text) && Number(text) <= Number.MAX_SAFE_INTEGER;
}

export class RedisMailbox implements Mailbox {
  constructor(
    private readonly ctx: Context,
    private readonly dir: DirectoryKeys,
    private readonly keys: MailboxKeys,
    readonly id: MailboxId,
  ) {}

  async append(source: AsyncIterable<Uint8Array>, options: AppendOptions = {}): Promise<MessageInfo> {
    if (options.uid !== undefined) assertUid(options.uid);
    const receivedAt = options.receivedAt ?? Date.now();
    const staging = new MailboxStaging(this.ctx, this.keys);
    try {
      const { size, whole } = await stageAll(guardAppendSource(source, options), [staging], this.ctx.chunkBytes);
      // Sent together, answered in one round trip (an import brings its own UID).
      const [, allocated] = await Promise.all([
        call(this.ctx, "register mailbox", () => this.ctx.client.sadd(this.dir.mailboxes, this.id)),
        options.uid === undefined ? allocateUid(this.ctx, this.keys) : undefined,
      ]);
      const info = await commit(this.ctx, this.id, staging, {
        uid: options.uid,
        allocated,
        whole,
        size,
        receivedAt,
        retrievedAt: options.retrievedAt ?? null,
      });
      await afterDurableWrite(this.ctx, "append");
      return info;
    } catch (error) {
      // Source errors (client gone, abort, too-big) pass through unchanged; Redis errors are mapped
      // where they happen.
      await staging.discard();
      throw error;
    }
  }

  async list(): Promise<readonly MessageInfo[]> {
    const flat = (await runScript(this.ctx, "list mailbox", "mailroomList", [this.keys.order, this.keys.info], [])) as string[];
    const out: MessageInfo[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) out.push(parseInfo(flat[i]!, flat[i + 1]!));
    return out;
  }

  async read(uid: Uid, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const body = this.keys.body(uid);
    const what = `message ${uid} of ${this.id}`;
    const lookup = runScript(this.ctx, "open message", "mailroomOpen", [this.keys.info, body], [uid]);
    // Sent right behind the lookup, on the same connection: Redis answers both in one round trip.
    const first = firstChunk(this.ctx, body, what);
    const found = (await lookup) as [string, number] | null;
    if (!found) throw new StoreError("not-found", `redis: no message ${uid} in ${this.id}`);
    const whole = readChunks(this.ctx, body, Number(found[1]), what, first);
    return options.bodyLines === undefined ? whole : takeTop(whole, options.bodyLines);
  }

  async expunge(uids: readonly Uid[], lease: Lease): Promise<number> {
    const k = this.keys;
    const removed = Number(
      await runScript(
        this.ctx,
        "expunge",
        "mailroomExpunge",
        [k.lease, k.info, k.order, ...uids.map((uid) => k.body(uid))],
        [lease.token, ...uids],
      ),
    );
    if (removed < 0) throw this.leaseLost(lease);
    await afterDurableWrite(this.ctx, "expunge");
    return removed;
  }

  async markRetrieved(uids: readonly Uid[], lease: Lease): Promise<void> {
    const result = Number(
      await runScript(
        this.ctx,
        "mark retrieved",
        "mailroomMarkRetrieved",
        [this.keys.lease, this.keys.info],
        [lease.token, Date.now(), ...uids],
      ),
    );
    if (result < 0) throw this.leaseLost(lease);
  }

  async uidMark(): Promise<string | null> {
    const next = await call(this.ctx, "uid mark", () => this.ctx.client.get(this.keys.next));
    return next !== null && isCounterValue(next) ? `redis:${next}` : null;
  }

  async skipUids(mark: string): Promise<void> {
    const last = /^redis:([1-9][0-9]{0,15})$/.exec(mark);
    if (!last || !isCounterValue(last[1]!)) return;
    await runScript(this.ctx, "skip uids", "mailroomSkipUids", [this.keys.next], [last[1]!]);
    await afterDurableWrite(this.ctx, "skip uids");
  }

  async acquireLease(options: LeaseOptions): Promise<Lease> {
    const ttlMs = Math.max(1, Math.ceil(options.ttlMs));
    const token = randomUUID();
    const keys = [this.keys.lease, this.keys.leaseHolder, this.keys.leaseOwner];
    const stamp = processStamp();
    const owner = stamp ? JSON.stringify(stamp) : "";
    const take = async (ended: string): Promise<[number, string?, string?, string?]> =>
      (await runScript(this.ctx, "acquire lease", "mailroomAcquire", keys, [token, options.holder, ttlMs, owner, ended])) as [
        number,
        string?,
        string?,
        string?,
      ];
    let result = await take("");
    // A lease whose process has ended on this machine is replaced at once, by its token: a successor
    // that got in meanwhile is live and stays.
    if (Number(result[0]) !== 1 && result[2] && processHasEnded(parseProcessStamp(result[3]))) result = await take(result[2]);
    if (Number(result[0]) !== 1) {
      throw new StoreError("in-use", `redis: ${this.id} is in use by ${result[1] || "another session"}`);
    }
    const ctx = this.ctx;
    const id = this.id;
    let expiresAt = Date.now() + ttlMs;
    return {
      mailbox: id,
      token,
      holder: options.holder,
      get expiresAt() {
        return expiresAt;
      },
      async renew() {
        const renewed = Number(await runScript(ctx, "renew lease", "mailroomRenew", keys, [token, ttlMs]));
        if (renewed !== 1) throw new StoreError("lease-lost", `redis: lease on ${id} expired and was taken over`);
        expiresAt = Date.now() + ttlMs;
      },
      async release() {
        try {
          await runScript(ctx, "release lease", "mailroomRelease", keys, [token]);
        } catch (error) {
          // Releasing is a courtesy: an unreleased lease expires on its own after its ttl.
          ctx.logger.warn({ mailbox: id, error: String(error) }, "redis store: could not release lease");
        }
      },
    };
  }

  private leaseLost(lease: Lease): StoreError {
    return new StoreError("lease-lost", `redis: lease ${lease.token} on ${this.id} is no longer held`);
  }
}
