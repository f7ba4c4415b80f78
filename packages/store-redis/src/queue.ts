import { randomBytes } from "node:crypto";
import {
  StoreError,
  compareAge,
  compareDue,
  guardAppendSource,
  mergeRecipients,
  newQueueId,
  parseProcessStamp,
  processHasEnded,
  processStamp,
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
import type { RedisClient } from "./connection.js";
import { afterDurableWrite, call, runScript, type Context } from "./context.js";
import { escapeKeyPart } from "./keys.js";
import { Staging, readChunks, stageAll, wholeArgs } from "./messages.js";

/**
 * The outbound queue. Every key shares the hash tag `{queue}`, so each script below touches one slot:
 *
 *   <p>{queue}:items          hash    id -> QueueItem as JSON
 *   <p>{queue}:due            zset    ids of "queued" items, scored by nextAttemptAt (dead ones leave it)
 *   <p>{queue}:claims         hash    id -> "token expiresAt ttl holder" (times by the Redis clock)
 *   <p>{queue}:claim-owners   hash    id -> "token owner": the claiming process as JSON (processStamp)
 *   <p>{queue}:body:<id>      list    the message octets in chunks
 *   <p>{queue}:stage:<random> list    an enqueue in progress; expires unless committed
 *
 * Claims are fenced: finish, reschedule, dead-letter and renew compare the token and a live expiry
 * inside the same script that makes the change. Changes that rewrite the item JSON (reschedule,
 * dead-letter, retry) compute it here and commit it only if the stored JSON is still the one they read
 * (compare-and-set), so an operator's retry and a worker's reschedule never overwrite each other.
 * A claim whose process has ended on this machine (a killed server) counts as free: the claimer names
 * the tokens it judged so (see `deadClaims`), and the claim script takes only claims with those tokens.
 */

// Current Redis time in milliseconds; scripts use it for claim expiry so every host agrees.
const CLOCK = String.raw`
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

// Is the claim on ARGV[1] held with token ARGV[2] and still live? (KEYS[claims] passed as `claims`.)
const HELD = String.raw`
  local function held(claims, id, token, clock)
    local c = redis.call('HGET', claims, id)
    if not c then return false end
    local tok, exp = string.match(c, '^(%S+) (%S+)')
    return tok == token and tonumber(exp) > clock
  end`;

// The tokens of claims whose process has ended, passed space-separated, as a set.
const ENDED = String.raw`
  local function endedTokens(list)
    local set = {}
    for t in string.gmatch(list, '%S+') do set[t] = true end
    return set
  end`;

const QUEUE_SCRIPTS = {
  // KEYS: claims. ARGV: tokens of claims whose process has ended (space-separated). Ids under a live claim.
  mailroomQueueDelivering: String.raw`
    ${CLOCK}
    ${ENDED}
    local ended = endedTokens(ARGV[1])
    local out = {}
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      local tok, exp = string.match(all[i + 1], '^(%S+) (%S+)')
      if tok and tonumber(exp) > clock and not ended[tok] then out[#out + 1] = all[i] end
    end
    return out`,

  // KEYS: items, due, stage, body. ARGV: id, json, nextAttemptAt, chunks, and the whole message when
  // nothing was staged (absent for an empty one).
  mailroomQueueCommit: String.raw`
    local chunks = tonumber(ARGV[4])
    if chunks > 0 then
      if redis.call('LLEN', KEYS[3]) ~= chunks then return 'staging-lost' end
      redis.call('RENAME', KEYS[3], KEYS[4])
      redis.call('PERSIST', KEYS[4])
    elseif ARGV[5] then
      redis.call('RPUSH', KEYS[4], ARGV[5])
    end
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
    return 'ok'`,

  // KEYS: due, items, claims, claim-owners. ARGV: now, limit, ttl, holder, token seed, tokens of
  // claims whose process has ended (space-separated), this claimer's owner JSON ('' when unknown).
  // Returns id, json, token, expiresAt, … for each item claimed.
  mailroomQueueClaim: String.raw`
    ${CLOCK}
    ${ENDED}
    local ended = endedTokens(ARGV[6])
    local limit = tonumber(ARGV[2])
    local out = {}
    local got = 0
    local offset = 0
    while got < limit do
      local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', offset, 100)
      if #ids == 0 then break end
      offset = offset + #ids
      for _, id in ipairs(ids) do
        if got >= limit then break end
        local c = redis.call('HGET', KEYS[3], id)
        local free = true
        if c then
          local tok, exp = string.match(c, '^(%S+) (%S+)')
          free = tonumber(exp) <= clock or ended[tok] == true
        end
        local json = redis.call('HGET', KEYS[2], id)
        if free and json then
          got = got + 1
          local token = ARGV[5] .. '.' .. got
          local exp = clock + tonumber(ARGV[3])
          redis.call('HSET', KEYS[3], id, token .. ' ' .. exp .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
          if ARGV[7] == '' then
            redis.call('HDEL', KEYS[4], id)
          else
            redis.call('HSET', KEYS[4], id, token .. ' ' .. ARGV[7])
          end
          out[#out + 1] = id
          out[#out + 1] = json
          out[#out + 1] = token
          out[#out + 1] = tostring(exp)
        end
      end
    end
    return out`,

  // KEYS: claims. ARGV: id, token, ttl ('' = the one claimed with). {expiresAt, ttl} or 'lost'.
  mailroomQueueRenew: String.raw`
    ${CLOCK}
    ${HELD}
    if not held(KEYS[1], ARGV[1], ARGV[2], clock) then return 'lost' end
    local c = redis.call('HGET', KEYS[1], ARGV[1])
    local tok, _, ttl, holder = string.match(c, '^(%S+) (%S+) (%S+) ?(.*)$')
    if ARGV[3] ~= '' then ttl = ARGV[3] end
    local exp = clock + tonumber(ttl)
    redis.call('HSET', KEYS[1], ARGV[1], tok .. ' ' .. exp .. ' ' .. ttl .. ' ' .. holder)
    return {tostring(exp), ttl}`,

  // KEYS: items, due, claims, body, claim-owners. ARGV: id, token.
  mailroomQueueFinish: String.raw`
    ${CLOCK}
    ${HELD}
    if not held(KEYS[3], ARGV[1], ARGV[2], clock) then return 'lost' end
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[5], ARGV[1])
    redis.call('DEL', KEYS[4])
    return 'ok'`,

  // KEYS: items, due, claims, claim-owners. ARGV: id, token ('' = operator, no claim needed), expected json, new json,
  // nextAttemptAt ('' = dead: leaves the due set), 'keep' to change nothing while a live claim holds the
  // item ('claimed'), tokens of claims whose process has ended (space-separated; not live). Ends any claim.
  mailroomQueueUpdate: String.raw`
    ${CLOCK}
    ${HELD}
    ${ENDED}
    if ARGV[2] ~= '' and not held(KEYS[3], ARGV[1], ARGV[2], clock) then return 'lost' end
    if ARGV[6] == 'keep' then
      local c = redis.call('HGET', KEYS[3], ARGV[1])
      if c then
        local tok, exp = string.match(c, '^(%S+) (%S+)')
        if tonumber(exp) > clock and not endedTokens(ARGV[7])[tok] then return 'claimed' end
      end
    end
    local current = redis.call('HGET', KEYS[1], ARGV[1])
    if not current then return 'not-found' end
    if current ~= ARGV[3] then return 'changed' end
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
    if ARGV[5] == '' then
      redis.call('ZREM', KEYS[2], ARGV[1])
    else
      redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
    end
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[4], ARGV[1])
    return 'ok'`,

  // KEYS: items, due, claims, body, claim-owners. ARGV: id.
  mailroomQueueRemove: String.raw`
    if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 'not-found' end
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('HDEL', KEYS[5], ARGV[1])
    redis.call('DEL', KEYS[4])
    return 'ok'`,
} as const;

type QueueScript = keyof typeof QUEUE_SCRIPTS;
type Method = (numberOfKeys: number, ...args: Array<string | number | Uint8Array>) => Promise<unknown>;

const defined = new WeakSet<RedisClient>();

function script(ctx: Context, what: string, name: QueueScript, keys: readonly string[], args: ReadonlyArray<string | number | Uint8Array>): Promise<unknown> {
  const client = ctx.client;
  if (!defined.has(client)) {
    for (const [n, lua] of Object.entries(QUEUE_SCRIPTS)) client.defineCommand(n, { lua });
    defined.add(client);
  }
  const method = (client as unknown as Record<QueueScript, Method>)[name];
  return call(ctx, what, () => method.call(client, keys.length, ...keys, ...args));
}

class QueueKeys {
  readonly items: string;
  readonly due: string;
  readonly claims: string;
  readonly claimOwners: string;
  private readonly base: string;

  constructor(prefix: string) {
    this.base = `${prefix}{queue}:`;
    this.items = `${this.base}items`;
    this.due = `${this.base}due`;
    this.claims = `${this.base}claims`;
    this.claimOwners = `${this.base}claim-owners`;
  }

  body(id: string): string {
    return `${this.base}body:${escapeKeyPart(id)}`;
  }

  stage(): string {
    return `${this.base}stage:${randomBytes(12).toString("hex")}`;
  }
}

const lost = (id: string): StoreError => new StoreError("lease-lost", `redis: claim on queue item ${id} expired or was taken over`);
const missing = (id: string): StoreError => new StoreError("not-found", `redis: no queue item ${JSON.stringify(id)}`);

function parseItem(json: string): QueueItem {
  return JSON.parse(json) as QueueItem;
}

export class RedisQueue implements Queue {
  private readonly keys: QueueKeys;

  constructor(private readonly ctx: Context) {
    this.keys = new QueueKeys(ctx.prefix);
  }

  async enqueue(
    envelope: { readonly sender: string; readonly recipients: readonly string[]; readonly meta?: Readonly<Record<string, string>> },
    source: AsyncIterable<Uint8Array>,
    options: EnqueueOptions = {},
  ): Promise<QueueItem> {
    const now = Date.now();
    const id = newQueueId(now);
    const staging = new Staging(this.ctx, this.keys.stage());
    try {
      const { size, whole } = await stageAll(guardAppendSource(source, options), [staging], this.ctx.chunkBytes);
      const item: QueueItem = {
        id,
        sender: envelope.sender,
        recipients: envelope.recipients.map((address) => ({ address, status: "pending" as const })),
        size,
        createdAt: now,
        attempts: 0,
        nextAttemptAt: Math.round(options.notBefore ?? now),
        lastError: null,
        state: "queued",
        meta: { ...envelope.meta },
      };
      const status = await script(
        this.ctx,
        "commit queued message",
        "mailroomQueueCommit",
        [this.keys.items, this.keys.due, staging.key, this.keys.body(id)],
        [id, JSON.stringify(item), item.nextAttemptAt, staging.chunks, ...wholeArgs(whole)],
      );
      if (status !== "ok") throw new StoreError("temporary", `redis: staged queue message ${id} expired or was evicted before commit`);
      await afterDurableWrite(this.ctx, "enqueue");
      return item;
    } catch (error) {
      await staging.discard();
      throw error;
    }
  }

  async claim(options: ClaimOptions): Promise<readonly QueueClaim[]> {
    const limit = Math.max(0, Math.floor(options.limit ?? 1));
    if (limit === 0) return [];
    const ttl = Math.max(0, Math.ceil(options.ttlMs));
    const stamp = processStamp();
    const ended = stamp ? await this.deadClaims() : [];
    // Holder text goes last in the claim record, so spaces in it are harmless.
    const raw = (await script(
      this.ctx,
      "claim queue items",
      "mailroomQueueClaim",
      [this.keys.due, this.keys.items, this.keys.claims, this.keys.claimOwners],
      [
        Math.round(options.now ?? Date.now()),
        limit,
        ttl,
        options.holder.replace(/[\r\n]/g, " "),
        randomBytes(12).toString("hex"),
        ended.join(" "),
        stamp ? JSON.stringify(stamp) : "",
      ],
    )) as string[];
    const claims: QueueClaim[] = [];
    for (let i = 0; i + 3 < raw.length; i += 4) {
      claims.push({ item: parseItem(raw[i + 1]!), token: raw[i + 2]!, expiresAt: Number(raw[i + 3]), ttlMs: ttl });
    }
    return claims.sort((a, b) => compareDue(a.item, b.item));
  }

  /** Tokens of live-looking claims whose process has ended on this machine (a killed server's). */
  private async deadClaims(): Promise<string[]> {
    const owners = await call(this.ctx, "read queue claim owners", () => this.ctx.client.hgetall(this.keys.claimOwners));
    const ended: string[] = [];
    for (const record of Object.values(owners)) {
      const space = record.indexOf(" ");
      if (space > 0 && processHasEnded(parseProcessStamp(record.slice(space + 1)))) ended.push(record.slice(0, space));
    }
    return ended;
  }

  async renew(claim: QueueClaim): Promise<QueueClaim> {
    const id = claim.item.id;
    const ttl = claim.ttlMs === undefined ? "" : String(Math.max(0, Math.ceil(claim.ttlMs)));
    const result = await script(this.ctx, "renew queue claim", "mailroomQueueRenew", [this.keys.claims], [id, claim.token, ttl]);
    if (!Array.isArray(result)) throw lost(id);
    const item = await this.get(id);
    if (!item) throw lost(id);
    return { item, token: claim.token, expiresAt: Number(result[0]), ttlMs: Number(result[1]) };
  }

  async readMessage(id: string): Promise<AsyncIterable<Uint8Array>> {
    const item = await this.get(id);
    if (!item) throw missing(id);
    const key = this.keys.body(id);
    const count = item.size === 0 ? 0 : await call(this.ctx, "open queued message", () => this.ctx.client.llen(key));
    if (item.size > 0 && count === 0) throw missing(id);
    return readChunks(this.ctx, key, count, `queued message ${id}`);
  }

  async finish(claim: QueueClaim): Promise<void> {
    const id = claim.item.id;
    const status = await script(
      this.ctx,
      "finish queue item",
      "mailroomQueueFinish",
      [this.keys.items, this.keys.due, this.keys.claims, this.keys.body(id), this.keys.claimOwners],
      [id, claim.token],
    );
    if (status !== "ok") throw lost(id);
    await afterDurableWrite(this.ctx, "finish");
  }

  /**
   * Read, change, compare-and-set; a concurrent change by someone else makes it start over. With
   * `keepClaimed`, an item a live claim holds is left as it is ("claimed").
   */
  private async update(
    id: string,
    claim: QueueClaim | null,
    change: (item: QueueItem) => QueueItem,
    keepClaimed = false,
  ): Promise<"ok" | "claimed"> {
    const ended = keepClaimed && processStamp() ? (await this.deadClaims()).join(" ") : "";
    for (let round = 0; round < 20; round++) {
      const json = await call(this.ctx, "read queue item", () => this.ctx.client.hget(this.keys.items, id));
      if (json === null) throw claim ? lost(id) : missing(id);
      const next = change(parseItem(json));
      const status = await script(
        this.ctx,
        "update queue item",
        "mailroomQueueUpdate",
        [this.keys.items, this.keys.due, this.keys.claims, this.keys.claimOwners],
        [
          id,
          claim?.token ?? "",
          json,
          JSON.stringify(next),
          next.state === "dead" ? "" : Math.round(next.nextAttemptAt),
          keepClaimed ? "keep" : "",
          ended,
        ],
      );
      if (status === "claimed") return "claimed";
      if (status === "ok") {
        await afterDurableWrite(this.ctx, "queue update");
        return "ok";
      }
      if (status === "lost") throw lost(id);
      if (status === "not-found") throw claim ? lost(id) : missing(id);
    }
    throw new StoreError("temporary", `redis: queue item ${id} keeps changing; try again`);
  }

  async reschedule(claim: QueueClaim, options: RescheduleOptions): Promise<void> {
    await this.update(claim.item.id, claim, (item) => ({
      ...item,
      attempts: item.attempts + 1,
      nextAttemptAt: Math.round(options.nextAttemptAt),
      lastError: options.error,
      recipients: mergeRecipients(item.recipients, options.recipients),
      state: "queued",
    }));
  }

  async deadLetter(claim: QueueClaim, options: { readonly error: string; readonly recipients?: readonly QueueRecipient[] }): Promise<void> {
    await this.update(claim.item.id, claim, (item) => ({
      ...item,
      attempts: item.attempts + 1,
      lastError: options.error,
      recipients: mergeRecipients(item.recipients, options.recipients),
      state: "dead",
    }));
  }

  async list(): Promise<readonly QueueItem[]> {
    const all = await call(this.ctx, "list queue", () => this.ctx.client.hvals(this.keys.items));
    return all.map(parseItem).sort(compareAge);
  }

  async get(id: string): Promise<QueueItem | null> {
    const json = await call(this.ctx, "get queue item", () => this.ctx.client.hget(this.keys.items, id));
    return json === null ? null : parseItem(json);
  }

  async delivering(): Promise<readonly string[]> {
    const ended = (await this.deadClaims()).join(" ");
    const ids = await script(this.ctx, "list queue deliveries", "mailroomQueueDelivering", [this.keys.claims], [ended]);
    return ids as string[];
  }

  async retry(id: string, options: RetryOptions = {}): Promise<RetryOutcome> {
    const now = Date.now();
    const status = await this.update(id, null, (item) => ({ ...item, state: "queued", nextAttemptAt: now }), !options.breakClaim);
    return status === "claimed" ? "in-delivery" : "retried";
  }

  async remove(id: string): Promise<void> {
    const status = await script(
      this.ctx,
      "remove queue item",
      "mailroomQueueRemove",
      [this.keys.items, this.keys.due, this.keys.claims, this.keys.body(id), this.keys.claimOwners],
      [id],
    );
    if (status !== "ok") throw missing(id);
    await afterDurableWrite(this.ctx, "queue remove");
  }
}
