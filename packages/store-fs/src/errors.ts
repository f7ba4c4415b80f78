import { StoreError, isStoreError, type StoreErrorCode } from "@mailroom/store";

/** The errno codes a failing file system call may carry, mapped to what a protocol can act on. */
const BY_ERRNO: Readonly<Record<string, StoreErrorCode>> = {
  ENOSPC: "no-space",
  EDQUOT: "no-space",
  // A permission or a read-only mount is the operator's to fix, and mail must wait for it rather than
  // bounce: Postfix and Dovecot's LDA defer on these too (451 4.3.0, not 554).
  EACCES: "unavailable",
  EPERM: "unavailable",
  EROFS: "unavailable",
  EMFILE: "temporary",
  ENFILE: "temporary",
  EAGAIN: "temporary",
  EBUSY: "temporary",
  EINTR: "temporary",
  EIO: "unavailable",
  ENOTCONN: "unavailable",
  ESTALE: "unavailable",
  ETIMEDOUT: "unavailable",
  ENAMETOOLONG: "invalid-name",
};

const WITH_PATH = new Set(["EACCES", "EPERM", "EROFS"]);

export function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** True when `error`, or the error it wraps (`cause`), is a system error with one of these codes. */
export function causedByErrno(error: unknown, ...codes: string[]): boolean {
  return isErrno(error, ...codes) || isErrno((error as { cause?: unknown } | null)?.cause, ...codes);
}

/** True for a Node system error with this errno code. */
export function isErrno(error: unknown, ...codes: string[]): boolean {
  const code = errnoOf(error);
  return code !== undefined && codes.includes(code);
}

/**
 * The one place where file system failures become StoreErrors. `ENOENT` means "not-found" only where
 * the caller says a missing file is the user's problem (reading a message); elsewhere a missing
 * directory under our root is a broken installation and stays "permanent".
 */
export function fsError(error: unknown, what: string, path: string, options: { enoent?: StoreErrorCode } = {}): StoreError {
  if (isStoreError(error)) return error;
  const errno = errnoOf(error) ?? "";
  let code: StoreErrorCode | undefined = BY_ERRNO[errno];
  if (errno === "ENOENT") code = options.enoent ?? "permanent";
  code ??= "temporary";
  const detail = error instanceof Error ? error.message : String(error);
  // The path tells the operator which permission or mount to fix; it only ever reaches the log.
  const where = code === "permanent" || code === "not-found" || WITH_PATH.has(errno) ? ` (${path})` : "";
  return new StoreError(code, `maildir: ${what} failed${where}: ${detail}`, { cause: error });
}

/** Runs one file system step and maps its failure. */
export async function attempt<T>(what: string, path: string, step: () => Promise<T>, options?: { enoent?: StoreErrorCode }): Promise<T> {
  try {
    return await step();
  } catch (error) {
    throw fsError(error, what, path, options);
  }
}
