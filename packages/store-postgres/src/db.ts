import { createHash } from "node:crypto";
import type pg from "pg";
import { StoreError, type Logger, type StoreErrorCode } from "@mailroom/store";
import { queryTimedOut, toStoreError } from "./errors.js";

/**
 * Marks an error thrown by the caller's message source (not by the database), so that it passes
 * through unchanged instead of being classified as a database failure.
 */
export class SourceFailure {
  constructor(readonly cause: unknown) {}
}

/**
 * Pulls the next chunk from the source; source errors come out wrapped in SourceFailure. With a
 * signal, an abort ends the wait at once, also when the source is stuck waiting for a silent client.
 */
export async function nextFromSource(
  iterator: AsyncIterator<Uint8Array>,
  signal?: AbortSignal,
): Promise<IteratorResult<Uint8Array>> {
  try {
    if (!signal) return await iterator.next();
    signal.throwIfAborted();
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([iterator.next(), aborted]);
    } finally {
      signal.removeEventListener("abort", onAbort!);
    }
  } catch (error) {
    throw new SourceFailure(error);
  }
}

export interface Db {
  readonly pool: pg.Pool;
  readonly logger: Logger;
  /** One statement on any pooled connection; errors become StoreErrors. */
  query<R extends pg.QueryResultRow>(
    what: string,
    sql: string,
    params?: readonly unknown[],
    overrides?: Readonly<Record<string, StoreErrorCode>>,
  ): Promise<pg.QueryResult<R>>;
  /**
   * Runs `fn` in one transaction with synchronous commit, so the promise resolves only after the
   * commit is on disk. Any failure rolls back; source errors are rethrown as they are, every other
   * error as a StoreError.
   */
  transaction<T>(what: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T>;
}

const names = new Map<string, string>();

/**
 * The prepared-statement name for a statement text. Every statement with parameters runs as a named
 * prepared statement, so each pooled connection parses and plans it once instead of on every call
 * (the delivery insert and the lookups of every RCPT are the same few texts over and over). The name
 * comes from the text, so stores on different schemas sharing one pool never collide, and the texts
 * are the fixed SQL of this package, so the set of names per connection stays small.
 */
export function statementName(sql: string): string {
  let name = names.get(sql);
  if (name === undefined) {
    name = `mr_${createHash("sha256").update(sql).digest("hex").slice(0, 24)}`;
    names.set(sql, name);
  }
  return name;
}

/**
 * `isClosed` makes every call fail fast once the store was closed, also with a caller-owned pool.
 * `prepared` false sends every statement unnamed (for poolers that cannot keep prepared statements).
 */
export function createDb(pool: pg.Pool, logger: Logger, isClosed: () => boolean = () => false, prepared = true): Db {
  const closed = (what: string): StoreError => new StoreError("unavailable", `postgres: ${what}: store is closed`);
  return {
    pool,
    logger,
    async query<R extends pg.QueryResultRow>(
      what: string,
      sql: string,
      params?: readonly unknown[],
      overrides?: Readonly<Record<string, StoreErrorCode>>,
    ) {
      if (isClosed()) throw closed(what);
      try {
        if (params === undefined || !prepared) return await pool.query<R>(sql, params as unknown[] | undefined);
        return await pool.query<R>({ name: statementName(sql), text: sql, values: params as unknown[] });
      } catch (error) {
        throw toStoreError(error, what, overrides);
      }
    },
    async transaction<T>(what: string, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
      if (isClosed()) throw closed(what);
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (error) {
        throw toStoreError(error, what);
      }
      // A checked-out client has no pool listener: without ours, a connection that dies while we wait
      // for the message source would be an unhandled 'error' event and take the process down.
      let broken: Error | undefined;
      const onError = (error: Error): void => {
        broken = error;
        logger.warn({ err: error.message }, "postgres connection lost during a transaction");
      };
      client.on("error", onError);
      try {
        // SET LOCAL: durability must not depend on how the server or a pooler is configured.
        await client.query("BEGIN; SET LOCAL synchronous_commit TO on");
        const result = await fn(client);
        await client.query("COMMIT");
        return result;
      } catch (error) {
        if (queryTimedOut(error)) {
          // The connection still waits for that answer: a ROLLBACK would queue behind it and time out
          // too. Dropping the connection ends the transaction on the server, if it is still there.
          broken ??= new Error("query timeout");
        } else {
          try {
            await client.query("ROLLBACK");
          } catch (rollbackError) {
            broken ??= rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
          }
        }
        if (error instanceof SourceFailure) throw error.cause;
        throw toStoreError(error, what);
      } finally {
        client.off("error", onError);
        // Handing back a connection whose state is unknown would poison the next user: drop it.
        client.release(broken);
      }
    },
  };
}
