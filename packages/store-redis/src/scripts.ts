import type { Buffer } from "node:buffer";
import type { RedisClient } from "./connection.js";

/**
 * Every change that touches more than one key runs as one of these Lua scripts, so Redis applies it
 * atomically. All keys a script touches are passed in KEYS (never built inside Lua) and share one hash
 * tag, which is what Redis Cluster requires. ioredis sends them with EVALSHA and falls back to EVAL
 * when the server has not seen the script yet (after a restart or SCRIPT FLUSH).
 *
 * Status results are plain strings ("ok", "exists", "not-found", …) rather than Lua errors, so that a
 * real Redis error is never confused with a refusal.
 */
const SOURCES = {
  // KEYS: next, used, info. Skips numbers that a caller already took as explicit UIDs. The counter
  // never starts below Redis' clock in microseconds: writes Redis loses (a crash with a weaker fsync
  // setting, a failover to a replica that lagged) take the counter back with them, and the numbers
  // they gave out must not come again for other messages, or a POP3 client that kept a lost one's
  // UIDL would never download the new one. The clock has moved on past them since. Numbers are
  // formatted with %.0f, exact for integers below 2^53: Redis' Lua formats %d through a C long, which
  // is 32 bits on 32-bit builds and would mangle a 16-digit number.
  mailroomAllocUid: String.raw`
    local now = redis.call('TIME')
    local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
    if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then redis.call('SET', KEYS[1], string.format('%.0f', floor)) end
    while true do
      local uid = string.format('%.0f', redis.call('INCR', KEYS[1]))
      if redis.call('SISMEMBER', KEYS[2], uid) == 0 and redis.call('HEXISTS', KEYS[3], uid) == 0 then
        return uid
      end
    end`,

  // KEYS: next. ARGV: the last number another store's counter gave out for this mailbox (a copy).
  // The counter only grows.
  mailroomSkipUids: String.raw`
    local current = tonumber(redis.call('GET', KEYS[1]) or '0')
    if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
    return 'ok'`,

  // KEYS: stage. ARGV: chunk, ttl ms. Every chunk pushes the expiry out again, so only an abandoned
  // append expires.
  mailroomStageChunk: String.raw`
    local n = redis.call('RPUSH', KEYS[1], ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return n`,

  // KEYS: info, order, seq, used, stage, body. ARGV: uid, explicit (0/1), size, receivedAt,
  // retrievedAt ("-" for none), number of staged chunks, and the whole message when nothing was staged
  // (absent for an empty one). The arrival counter moves first: a Redis error there (a damaged key)
  // then stops the script before it wrote anything that matters.
  mailroomCommit: String.raw`
    local uid = ARGV[1]
    if redis.call('HEXISTS', KEYS[1], uid) == 1 then return 'exists' end
    if ARGV[2] == '0' and redis.call('SISMEMBER', KEYS[4], uid) == 1 then return 'exists' end
    local chunks = tonumber(ARGV[6])
    if chunks > 0 and redis.call('LLEN', KEYS[5]) ~= chunks then return 'staging-lost' end
    local seq = redis.call('INCR', KEYS[3])
    if chunks > 0 then
      redis.call('RENAME', KEYS[5], KEYS[6])
      redis.call('PERSIST', KEYS[6])
    else
      redis.call('DEL', KEYS[6])
      if ARGV[7] then redis.call('RPUSH', KEYS[6], ARGV[7]) end
    end
    if ARGV[2] == '1' then redis.call('SADD', KEYS[4], uid) end
    redis.call('ZADD', KEYS[2], seq, uid)
    redis.call('HSET', KEYS[1], uid, ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
    return 'ok'`,

  // KEYS: info, order, body. ARGV: uid. Takes back a copy when a multi-mailbox delivery fails later.
  mailroomUncommit: String.raw`
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[3])
    return 'ok'`,

  // KEYS: order, info. Returns uid, info, uid, info, … in arrival order: one consistent snapshot.
  mailroomList: String.raw`
    local out = {}
    for _, uid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
      local info = redis.call('HGET', KEYS[2], uid)
      if info then
        out[#out + 1] = uid
        out[#out + 1] = info
      end
    end
    return out`,

  // KEYS: info, body. ARGV: uid. Returns {info, chunk count} or nil.
  mailroomOpen: String.raw`
    local info = redis.call('HGET', KEYS[1], ARGV[1])
    if not info then return nil end
    return {info, redis.call('LLEN', KEYS[2])}`,

  // KEYS: lease, info, order, body of ARGV[2], body of ARGV[3], … ARGV: token, uids…
  // -1 when the lease is not ours (fencing), else the number removed.
  mailroomExpunge: String.raw`
    if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
    local removed = 0
    for i = 2, #ARGV do
      if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
        redis.call('ZREM', KEYS[3], ARGV[i])
        redis.call('DEL', KEYS[i + 2])
        removed = removed + 1
      end
    end
    return removed`,

  // KEYS: lease, info. ARGV: token, now, uids… -1 when the lease is not ours.
  mailroomMarkRetrieved: String.raw`
    if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
    for i = 3, #ARGV do
      local info = redis.call('HGET', KEYS[2], ARGV[i])
      if info then
        local size, received, retrieved = string.match(info, '^(%S+) (%S+) (%S+)$')
        if retrieved == '-' then
          redis.call('HSET', KEYS[2], ARGV[i], size .. ' ' .. received .. ' ' .. ARGV[2])
        end
      end
    end
    return 0`,

  // KEYS: lease, lease-holder, lease-owner. ARGV: token, holder, ttl ms, owner ("" when unknown),
  // the token of a lease whose owner has ended ("" for none), which is replaced like a free one.
  // {1} when taken, {0, holder, token, owner} when in use.
  mailroomAcquire: String.raw`
    local current = redis.call('GET', KEYS[1])
    if current and (ARGV[5] == '' or current ~= ARGV[5]) then
      return {0, redis.call('GET', KEYS[2]) or '', current, redis.call('GET', KEYS[3]) or ''}
    end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
    if ARGV[4] == '' then
      redis.call('DEL', KEYS[3])
    else
      redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
    end
    return {1}`,

  // KEYS: lease, lease-holder, lease-owner. ARGV: token, ttl ms. Compare-and-set: only our own token is extended.
  mailroomRenew: String.raw`
    if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
    return 1`,

  // KEYS: lease, lease-holder, lease-owner. ARGV: token.
  mailroomRelease: String.raw`
    if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return 1`,

  // KEYS: domains, accounts, aliases. ARGV: domain.
  mailroomRemoveDomain: String.raw`
    if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'not-found' end
    local suffix = '@' .. ARGV[1]
    for _, address in ipairs(redis.call('HKEYS', KEYS[2])) do
      if string.sub(address, -#suffix) == suffix then return 'exists' end
    end
    for _, pair in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      local source = string.match(pair, '^([^\n]*)\n')
      if source and string.sub(source, -#suffix) == suffix then return 'exists' end
    end
    redis.call('SREM', KEYS[1], ARGV[1])
    return 'ok'`,

  // KEYS: domains, accounts. ARGV: address, domain, account JSON.
  mailroomAddAccount: String.raw`
    if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then return 'not-found' end
    if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 0 then return 'exists' end
    return 'ok'`,

  // KEYS: accounts. ARGV: address, account JSON.
  mailroomUpdateAccount: String.raw`
    if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'not-found' end
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    return 'ok'`,

  // KEYS: domains, aliases, targets of source, alias-seq. ARGV: source, target, domain of source.
  mailroomAddAlias: String.raw`
    if redis.call('SISMEMBER', KEYS[1], ARGV[3]) == 0 then return 'not-found' end
    if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return 'exists' end
    local seq = redis.call('INCR', KEYS[4])
    redis.call('ZADD', KEYS[3], seq, ARGV[2])
    redis.call('ZADD', KEYS[2], seq, ARGV[1] .. '\n' .. ARGV[2])
    return 'ok'`,

  // KEYS: aliases, targets of source. ARGV: source [, target]. Returns the number removed.
  mailroomRemoveAlias: String.raw`
    local removed = 0
    if #ARGV >= 2 then
      removed = redis.call('ZREM', KEYS[2], ARGV[2])
      redis.call('ZREM', KEYS[1], ARGV[1] .. '\n' .. ARGV[2])
    else
      for _, target in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
        redis.call('ZREM', KEYS[1], ARGV[1] .. '\n' .. target)
        removed = removed + 1
      end
      redis.call('DEL', KEYS[2])
    end
    return removed`,
} as const;

export type ScriptName = keyof typeof SOURCES;
export type ScriptArg = string | number | Buffer;

type ScriptMethod = (numberOfKeys: number, ...args: ScriptArg[]) => Promise<unknown>;

/** Registers the scripts on a client (idempotent) and returns a typed way to call them. */
export function defineScripts(client: RedisClient): (name: ScriptName, keys: readonly string[], args: readonly ScriptArg[]) => Promise<unknown> {
  for (const [name, lua] of Object.entries(SOURCES)) {
    // No numberOfKeys: the key count is passed per call, since expunge takes a variable number of keys.
    client.defineCommand(name, { lua });
  }
  const methods = client as unknown as Record<ScriptName, ScriptMethod>;
  return (name, keys, args) => methods[name].call(client, keys.length, ...keys, ...args);
}
