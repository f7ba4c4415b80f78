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
  MASTERDOWN: "unavailable",
  CLUSTERDOWN: "unavailable",
  BUSY: "temporary",
  TRYAGAIN: "temporary",
  READONLY: "temporary",
  NOREPLICAS: "temporary",
  OOM: "no-space",
};

const NAMES_UNAVAILABLE = new Set(["MaxRetriesPerRequestError", "ClusterAllFailedError"]);

/**
 * The one place where driver failures become StoreErrors. Anything we cannot place is "permanent"
 * (a bug or a misconfiguration such as a wrong password will not fix itself by retrying), but we keep
 * the original as `cause` so the operator sees it.
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
