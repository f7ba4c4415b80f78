import type { Account, RecipientLookups } from "./contract.js";
import { normalizeAddress, normalizeAliasSource, normalizeDomain } from "./names.js";

/**
 * The answers a store fetched in one go for `Directory.recipientLookups`, with the directory behind
 * them for anything the fetch did not cover. An adapter fills it with what it read and hands it out;
 * every answer is then the one the directory would have given at the time of the fetch.
 */
export class FetchedRecipientLookups implements RecipientLookups {
  private readonly accounts = new Map<string, Account | null>();
  private readonly targets = new Map<string, readonly string[]>();
  private readonly domains = new Map<string, boolean>();

  constructor(private readonly directory: RecipientLookups) {}

  /** Records what was read for one (normalised) address: its account, or null, and its alias targets. */
  address(address: string, account: Account | null, targets: readonly string[]): this {
    this.accounts.set(address, account);
    this.targets.set(address, targets);
    return this;
  }

  /** Records the targets of an alias source that is not an address (a `@domain` catch-all). */
  source(source: string, targets: readonly string[]): this {
    this.targets.set(source, targets);
    return this;
  }

  /** Records whether a (normalised) domain is local. */
  domain(domain: string, local: boolean): this {
    this.domains.set(domain, local);
    return this;
  }

  async hasDomain(domain: string): Promise<boolean> {
    // Normalised here as the directory does it, so that a malformed name is refused the same way.
    const known = this.domains.get(normalizeDomain(domain));
    return known ?? this.directory.hasDomain(domain);
  }

  async getAccount(address: string): Promise<Account | null> {
    const known = this.accounts.get(normalizeAddress(address));
    return known === undefined ? this.directory.getAccount(address) : known;
  }

  async aliasTargets(source: string): Promise<readonly string[]> {
    return this.targets.get(normalizeAliasSource(source)) ?? this.directory.aliasTargets(source);
  }
}
