import type { Logger } from "@mailroom/store";
import { StoreError } from "@mailroom/store";
import type { RedisClient } from "./connection.js";
import { mapped } from "./errors.js";
import type { ScriptArg, ScriptName } from "./scripts.js";

/** What every part of the adapter shares: one connection, its scripts and the settings. */
export interface Context {
  readonly client: RedisClient;
  readonly prefix: string;
  readonly chunkBytes: number;
  readonly stagingTtlMs: number;
  readonly waitReplicas: number;
  readonly waitTimeoutMs: number;
  readonly logger: Logger;
  readonly isClosed: () => boolean;
  readonly script: (name: ScriptName, keys: readonly string[], args: readonly ScriptArg[]) => Promise<unknown>;
}

/** Runs a script with error mapping, and refuses work once the store is closed. */
export function runScript(
  ctx: Context,
  context: string,
  name: ScriptName,
  keys: readonly string[],
  args: readonly ScriptArg[],
): Promise<unknown> {
  return call(ctx, context, () => ctx.script(name, keys, args));
}

export function call<T>(ctx: Context, context: string, action: () => Promise<T>): Promise<T> {
  if (ctx.isClosed()) return Promise.reject(new StoreError("unavailable", `redis: ${context}: store is closed`));
  return mapped(context, action);
}

/**
 * After a write that acknowledges mail, optionally waits until `waitReplicas` replicas have it. A
 * shortfall is logged, not thrown: the write is already visible on the primary, and failing now would
 * make the sender retry and deliver a duplicate. So is a WAIT that fails outright (a failover answers
 * it with UNBLOCKED, a broken connection with an error): the commit before it succeeded.
 */
export async function afterDurableWrite(ctx: Context, what: string): Promise<void> {
  if (ctx.waitReplicas <= 0) return;
  let acked: number;
  try {
    acked = await call(ctx, `wait for replicas after ${what}`, () => ctx.client.wait(ctx.waitReplicas, ctx.waitTimeoutMs));
  } catch (error) {
    ctx.logger.warn(
      { err: error instanceof Error ? error.message : String(error), wanted: ctx.waitReplicas },
      `redis store: ${what} is committed, but waiting for its replicas failed`,
    );
    return;
  }
  if (acked < ctx.waitReplicas) {
    ctx.logger.warn(
      { acked, wanted: ctx.waitReplicas, timeoutMs: ctx.waitTimeoutMs },
      `redis store: ${what} reached only ${acked} of ${ctx.waitReplicas} replicas in time`,
    );
  }
}
