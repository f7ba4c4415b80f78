import type { Directory, MailboxId } from "./contract.js";
import { isStoreError } from "./errors.js";
import { domainOf, normalizeAddress } from "./names.js";

/** Where mail for one address goes. */
export type Resolution =
  /** Local: deliver one copy to each of these mailboxes (duplicates removed). */
  | { readonly kind: "local"; readonly mailboxes: readonly MailboxId[] }
  /** The domain is local but no account or alias has this address. */
  | { readonly kind: "unknown" }
  /** The domain is not one of ours (or the address is malformed for us). */
  | { readonly kind: "not-local" };

/** Alias chains longer than this are treated as loops. Postfix stops at a similar depth. */
const MAX_ALIAS_DEPTH = 8;

/**
 * Expands aliases (including `@domain` catch-alls, which apply only when no account or exact alias
 * exists) until every branch ends at an account. Targets on foreign domains are ignored here:
 * forwarding to other domains is the outbound queue's business, not local delivery's.
 */
export async function resolveRecipient(directory: Directory, input: string): Promise<Resolution> {
  let address: string;
  try {
    address = normalizeAddress(input);
  } catch (error) {
    if (isStoreError(error) && error.code === "invalid-name") return { kind: "not-local" };
    throw error;
  }
  if (!(await directory.hasDomain(domainOf(address)))) return { kind: "not-local" };

  const mailboxes = new Set<MailboxId>();
  const seen = new Set<string>();
  const visit = async (addr: string, depth: number): Promise<void> => {
    if (seen.has(addr) || depth > MAX_ALIAS_DEPTH) return;
    seen.add(addr);
    const account = await directory.getAccount(addr);
    if (account) {
      mailboxes.add(account.mailbox);
      // An account can also be an alias source (keep a copy and forward): keep expanding.
    }
    let targets = await directory.aliasTargets(addr);
    if (!account && targets.length === 0) targets = await directory.aliasTargets(`@${domainOf(addr)}`);
    for (const target of targets) {
      if (await directory.hasDomain(domainOf(target))) await visit(target, depth + 1);
    }
  };
  await visit(address, 0);
  return mailboxes.size > 0 ? { kind: "local", mailboxes: [...mailboxes] } : { kind: "unknown" };
}
