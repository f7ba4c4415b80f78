import type { Directory, MailboxId, RecipientLookups } from "./contract.js";
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
export const MAX_ALIAS_DEPTH = 8;

/**
 * How many alias hops a `recipientLookups` fetch follows from the address: every hop
 * `resolveRecipient` follows, and one more for the domains of the last hop's targets.
 */
export const RECIPIENT_LOOKUP_DEPTH = MAX_ALIAS_DEPTH + 1;

/**
 * The lookups to resolve `address` with: the store's prefetched ones where it has them (one round
 * trip), else the directory itself. Use the result for every question about that one recipient.
 */
export async function lookupsFor(directory: Directory | RecipientLookups, address: string): Promise<RecipientLookups> {
  return "recipientLookups" in directory && directory.recipientLookups ? directory.recipientLookups(address) : directory;
}

/**
 * Expands aliases (including `@domain` catch-alls, which apply only when no account or exact alias
 * exists) until every branch ends at an account. Targets on foreign domains are ignored here:
 * forwarding to other domains is the outbound queue's business, not local delivery's.
 */
export async function resolveRecipient(lookups: Directory | RecipientLookups, input: string): Promise<Resolution> {
  let address: string;
  try {
    address = normalizeAddress(input);
  } catch (error) {
    if (isStoreError(error) && error.code === "invalid-name") return { kind: "not-local" };
    throw error;
  }
  const directory = await lookupsFor(lookups, address);
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
