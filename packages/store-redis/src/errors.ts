import { StoreError, isStoreError, type StoreErrorCode } from "@mailroom/store";

/** Socket-level failures: the server is not there (yet), or the connection broke under us. */
const NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTCONN",
]);

/** Messages ioredis itself uses when it will not (or can no longer) send a command. */
const CLIENT_GONE = [
  /connection is closed/i,
  /stream isn't writeable/i,
  /max retries per request/i,
  /command timed out/i,
  /connect(ion)? timeout/i,
  /none of the sentinels are available/i,
  /failed to refresh slots cache/i,
  /socket closed unexpectedly/i,
];

/** Redis error prefixes (the first word of a reply error) that mean "try again later". */
const REPLY_PREFIX: Readonly<Record<string, StoreErrorCode>> = {
  LOADING: "unavailable",
  // A blocked command (WAIT) cut short by a failover.
  UNBLOCKED: "temporary",
  MASTERDOWN: "unavailable",
  CLUSTERDOWN: "unavailable",
  // A password or ACL the operator got wrong (Redis restarted with requirepass, a user disabled or
  // missing a command): mail must wait in the senders' queues until it is fixed, not bounce.
  NOAUTH: "unavailable",
  WRONGPASS: "unavailable",
  NOPERM: "unavailable",
  // Redis cannot persist (RDB snapshot or AOF write failed) and refuses writes until it can again.
  MISCONF: "unavailable",
  BUSY: "temporary",
  TRYAGAIN: "temporary",
  READONLY: "temporary",
  NOREPLICAS: "temporary",
  OOM: "no-space",
};

const NAMES_UNAVAILABLE = new Set(["MaxRetriesPerRequestError", "ClusterAllFailedError"]);

/**
 * Redis' own wording when an AOF write failed for lack of space ("MISCONF Errors writing to the AOF
 * file: No space left on device"). The RDB variant of MISCONF does not say why the snapshot failed
 * (a full disk, an unwritable dir, a failed fork), so it stays "unavailable".
 */
const OUT_OF_SPACE = /no space left on device|disk quota exceeded/i;

/**
 * The one place where driver failures become StoreErrors. Anything we cannot place is "permanent"
 * (a bug, such as a command Redis does not know, will not fix itself by retrying), but we keep the
 * original as `cause` so the operator sees it.
 */
export function toStoreError(error: unknown, context: string): StoreError {
  if (isStoreError(error)) return error;
  const message = error instanceof Error ? error.message : String(error);
  const code = classify(error, message);
  return new StoreError(code, `redis: ${context}: ${message}`, { cause: error });
}

function classify(error: unknown, message: string): StoreErrorCode {
  const errno = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  if (typeof errno === "string" && NETWORK_CODES.has(errno)) return "unavailable";
  if (error instanceof Error && NAMES_UNAVAILABLE.has(error.name)) return "unavailable";
  if (CLIENT_GONE.some((re) => re.test(message))) return "unavailable";
  const first = /^[A-Z]+/.exec(message)?.[0];
  if (first !== undefined) {
    if (first === "MISCONF" && OUT_OF_SPACE.test(message)) return "no-space";
    const mapped = REPLY_PREFIX[first];
    if (mapped !== undefined) return mapped;
  }
  // A network error wrapped in a reply ("... ECONNREFUSED 127.0.0.1:6379") still means "not reachable".
  for (const code of NETWORK_CODES) if (message.includes(code)) return "unavailable";
  return "permanent";
}

/** Runs a driver call and maps whatever it throws. */
export async function mapped<T>(context: string, action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    throw toStoreError(error, context);
  }
}
