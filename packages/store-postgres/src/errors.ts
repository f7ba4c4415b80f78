import { StoreError, isStoreError, type StoreErrorCode } from "@mailroom/store";

/**
 * The one place where driver failures become StoreErrors. Protocols pick their reply from the code
 * alone, so the important split is "try again later" versus "this will never work": a database that is
 * restarting must give SMTP a 4xx, never a bounce.
 */

/** Socket-level failures (Node system error codes) that mean "the database is not reachable now". */
const NETWORK_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EADDRNOTAVAIL",
]);

/**
 * pg reports a lost or unusable connection with plain Errors that carry no code, only a message.
 * Matching text is fragile, so this list is pinned by the error-mapping unit test.
 */
const NETWORK_MESSAGES: readonly RegExp[] = [
  /connection terminated/i,
  /connection error/i,
  /not queryable/i,
  /timeout exceeded when trying to connect/i,
  /connection timeout/i,
  /query read timeout/i,
  /after calling end on the pool/i,
  /socket (?:hang up|closed)/i,
  /server closed the connection/i,
];

function sqlStateCode(sqlState: string): StoreErrorCode {
  if (sqlState === "23505") return "exists";
  if (sqlState === "53100") return "no-space";
  // 53xxx: out of memory, too many connections, configuration limits.
  if (sqlState.startsWith("53")) return "unavailable";
  // 08xxx: connection exceptions reported by the server.
  if (sqlState.startsWith("08")) return "unavailable";
  // 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up), 57P04/05 dropped/idle.
  if (sqlState.startsWith("57P")) return "unavailable";
  // Statement timeout and cancellation: the database is too slow right now.
  if (sqlState === "57014") return "unavailable";
  // Serialization failure and deadlock: the same transaction succeeds when simply run again.
  if (sqlState === "40001" || sqlState === "40P01") return "temporary";
  // Lock not available (NOWAIT, lock_timeout).
  if (sqlState === "55P03") return "temporary";
  // Read-only transaction: we are talking to a standby, e.g. during a failover.
  if (sqlState === "25006") return "unavailable";
  // Bad password, unknown role or database: the operator must fix the configuration, and until then
  // mail should wait in the sender's queue rather than bounce.
  if (sqlState.startsWith("28") || sqlState === "3D000") return "unavailable";
  return "permanent";
}

function stringProp(value: unknown, key: string): string | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const prop = (value as Record<string, unknown>)[key];
  return typeof prop === "string" ? prop : undefined;
}

/**
 * pg's client-side `query_timeout` fired: no answer came in time. The error carries no code, only
 * this message (pinned by the error-mapping unit test); "query read timeout" in NETWORK_MESSAGES maps
 * it to "unavailable".
 */
export function queryTimedOut(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 3; e = e.cause, depth++) {
    if (e.message === "Query read timeout") return true;
  }
  return false;
}

/** Classifies any error thrown by pg (or by the socket under it) into a StoreErrorCode. */
export function classifyPgError(error: unknown): StoreErrorCode {
  if (isStoreError(error)) return error.code;
  const code = stringProp(error, "code");
  if (code !== undefined) {
    if (NETWORK_CODES.has(code)) return "unavailable";
    if (/^[0-9A-Z]{5}$/.test(code)) return sqlStateCode(code);
  }
  // AggregateError from a failed connect to several addresses (localhost → ::1 and 127.0.0.1).
  if (error instanceof AggregateError && error.errors.length > 0) return classifyPgError(error.errors[0]);
  const message = error instanceof Error ? error.message : String(error);
  if (NETWORK_MESSAGES.some((re) => re.test(message))) return "unavailable";
  return "permanent";
}

/**
 * Wraps a pg error as a StoreError (StoreErrors pass through unchanged). `what` says what we were
 * doing; `overrides` lets one call site give a SQLSTATE a meaning only it knows, e.g. a foreign key
 * violation that means "the domain is gone" when adding an account.
 */
export function toStoreError(
  error: unknown,
  what: string,
  overrides?: Readonly<Record<string, StoreErrorCode>>,
): StoreError {
  if (isStoreError(error)) return error;
  const sqlState = stringProp(error, "code");
  const code = (sqlState !== undefined ? overrides?.[sqlState] : undefined) ?? classifyPgError(error);
  const detail = error instanceof Error ? error.message : String(error);
  const suffix = sqlState !== undefined ? ` (${sqlState})` : "";
  return new StoreError(code, `postgres: ${what}: ${detail}${suffix}`, { cause: error });
}
