import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { StoreError, type StoreErrorCode } from "@mailroom/store";
import { createRedisStore, toStoreError } from "../src/index.js";

function withCode(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

function named(name: string, message: string): Error {
  const error = new Error(message);
  Object.defineProperty(error, "name", { value: name });
  return error;
}

const table: Array<[string, unknown, StoreErrorCode]> = [
  ["connection refused", withCode("connect ECONNREFUSED 127.0.0.1:6379", "ECONNREFUSED"), "unavailable"],
  ["connection reset", withCode("read ECONNRESET", "ECONNRESET"), "unavailable"],
  ["unknown host", withCode("getaddrinfo ENOTFOUND redis.invalid", "ENOTFOUND"), "unavailable"],
  ["ioredis closed connection", new Error("Connection is closed."), "unavailable"],
  ["offline queue disabled", new Error("Stream isn't writeable and enableOfflineQueue options is false"), "unavailable"],
  ["retries exhausted", named("MaxRetriesPerRequestError", "Reached the max retries per request limit (which is 0)."), "unavailable"],
  ["command timeout", new Error("Command timed out"), "unavailable"],
  ["loading the dataset", named("ReplyError", "LOADING Redis is loading the dataset in memory"), "unavailable"],
  ["primary down", named("ReplyError", "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), "unavailable"],
  ["cluster down", named("ReplyError", "CLUSTERDOWN The cluster is down"), "unavailable"],
  ["busy script", named("ReplyError", "BUSY Redis is busy running a script."), "temporary"],
  ["slot migrating", named("ReplyError", "TRYAGAIN Multiple keys request during rehashing of slot"), "temporary"],
  ["failover to a replica", named("ReplyError", "READONLY You can't write against a read only replica."), "temporary"],
  ["out of memory", named("ReplyError", "OOM command not allowed when used memory > 'maxmemory'."), "no-space"],
  [
    "a failed RDB snapshot",
    named("ReplyError", "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk. ..."),
    "unavailable",
  ],
  ["an AOF write on a full disk", named("ReplyError", "MISCONF Errors writing to the AOF file: No space left on device"), "no-space"],
  ["an AOF write over quota", named("ReplyError", "MISCONF Errors writing to the AOF file: Disk quota exceeded"), "no-space"],
  ["an AOF write that failed otherwise", named("ReplyError", "MISCONF Errors writing to the AOF file: Input/output error"), "unavailable"],
  ["wrong type", named("ReplyError", "WRONGTYPE Operation against a key holding the wrong kind of value"), "permanent"],
  ["bad auth", named("ReplyError", "WRONGPASS invalid username-password pair or user is disabled."), "unavailable"],
  ["no auth", named("ReplyError", "NOAUTH Authentication required."), "unavailable"],
  ["ACL refusal", named("ReplyError", "NOPERM User mailroom has no permissions to run the 'evalsha' command"), "unavailable"],
  ["generic error", named("ReplyError", "ERR unknown command 'FOO'"), "permanent"],
  ["not even an Error", "something odd", "permanent"],
];

describe("error mapping", () => {
  for (const [what, error, code] of table) {
    it(`maps ${what} to "${code}"`, () => {
      const mapped = toStoreError(error, "test");
      expect(mapped).toBeInstanceOf(StoreError);
      expect(mapped.code).toBe(code);
      expect(mapped.message).toMatch(/^redis: test: /);
      expect(mapped.cause).toBe(error);
    });
  }

  it("passes StoreErrors through unchanged", () => {
    const original = new StoreError("in-use", "busy");
    expect(toStoreError(original, "test")).toBe(original);
  });

  it("fails to open with \"unavailable\" when nothing listens at the URL", async () => {
    // A port that was free a moment ago: nothing answers there.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as { port: number };
    await new Promise<void>((resolve) => server.close(() => resolve()));

    const started = Date.now();
    const error = await createRedisStore({ url: `redis://127.0.0.1:${port}`, connectTimeoutMs: 500 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).code).toBe("unavailable");
    expect((error as StoreError).message).toMatch(/ECONNREFUSED/);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
