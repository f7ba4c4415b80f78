/**
 * The one error type every store throws. Protocol layers decide their reply from `code` alone
 * (and `temporary`), so an adapter must map its driver's failures onto these codes and never let a
 * raw driver error escape: an unknown error is treated as "temporary" by the protocols, which is
 * safe but hides the cause from the operator.
 */
export type StoreErrorCode =
  /** The backend cannot be reached or timed out (database down, disk busy). Retry later. */
  | "unavailable"
  /** Any other transient failure. Retry later. */
  | "temporary"
  /** The mailbox lease is held by someone else. */
  | "in-use"
  /** The caller's lease expired and was taken over; its writes were refused. */
  | "lease-lost"
  /** No space left (disk full, quota). Temporary: space may come back. */
  | "no-space"
  /** The thing asked for does not exist. */
  | "not-found"
  /** The thing to create exists already. */
  | "exists"
  /** A name, address or UID that the store refuses to hold. */
  | "invalid-name"
  /** The message is larger than the caller's `maxBytes`. */
  | "too-big"
  /** Anything else that will fail again the same way. */
  | "permanent";

const TEMPORARY: ReadonlySet<StoreErrorCode> = new Set<StoreErrorCode>([
  "unavailable",
  "temporary",
  "in-use",
  "lease-lost",
  "no-space",
]);

export class StoreError extends Error {
  override readonly name = "StoreError";
  readonly code: StoreErrorCode;

  constructor(code: StoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  /** True when the same call may succeed later (SMTP 4xx, POP3 `[SYS/TEMP]`). */
  get temporary(): boolean {
    return TEMPORARY.has(this.code);
  }
}

/**
 * Checks by name as well as by class, so that two copies of this package (a bundled adapter and the
 * server's own) still recognise each other's errors.
 */
export function isStoreError(error: unknown): error is StoreError {
  return (
    error instanceof StoreError ||
    (error instanceof Error && error.name === "StoreError" && typeof (error as { code?: unknown }).code === "string")
  );
}

/** True for a StoreError of any of the given codes. */
export function hasStoreErrorCode(error: unknown, ...codes: StoreErrorCode[]): error is StoreError {
  return isStoreError(error) && codes.includes(error.code);
}

/** True when retrying later may help. Errors that are not StoreErrors count as temporary. */
export function isTemporaryError(error: unknown): boolean {
  return isStoreError(error) ? TEMPORARY.has(error.code) : true;
}
