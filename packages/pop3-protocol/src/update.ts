import type { Logger } from "@mailroom/store";
import { ok, storeErrorReply } from "./replies.js";
import type { TransactionState } from "./transaction.js";

/**
 * The UPDATE state (RFC 1939 section 6), entered by QUIT from TRANSACTION: record which messages were
 * retrieved, then delete the marked ones, all or none. Returns the reply; +OK only once the store has
 * confirmed both, otherwise an -ERR saying nothing was deleted. The caller releases the lease.
 */
export async function commitUpdate(tx: TransactionState, hostname: string, log: Logger): Promise<string> {
  const uids = (numbers: Set<number>): string[] =>
    [...numbers].sort((a, b) => a - b).map((n) => tx.messages[n - 1]!.uid);
  const marked = uids(tx.deleted);
  try {
    if (tx.retrieved.size > 0) await tx.mailbox.markRetrieved(uids(tx.retrieved), tx.lease);
    if (marked.length > 0) await tx.mailbox.expunge(marked, tx.lease);
  } catch (error) {
    log.error({ err: error, user: tx.account.address }, "update failed, nothing deleted");
    return storeErrorReply(error, "could not update the mailbox, no messages were deleted");
  }
  log.info({ user: tx.account.address, deleted: marked.length }, "quit");
  const n = marked.length;
  return ok(`${hostname} Mailroom POP3 server signing off (${n} message${n === 1 ? "" : "s"} deleted)`);
}
