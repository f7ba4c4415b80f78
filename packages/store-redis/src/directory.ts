import {
  FetchedRecipientLookups,
  RECIPIENT_LOOKUP_DEPTH,
  StoreError,
  domainOf,
  normalizeAddress,
  normalizeAliasSource,
  normalizeDomain,
  type Account,
  type Alias,
  type Directory,
  type RecipientLookups,
} from "@mailroom/store";
import { call, runScript, type Context } from "./context.js";
import type { DirectoryKeys } from "./keys.js";

interface StoredAccount {
  readonly passwordHash: string;
}

function toAccount(address: string, json: string): Account {
  const stored = JSON.parse(json) as StoredAccount;
  return { address, mailbox: address, passwordHash: stored.passwordHash };
}

function refuse(status: unknown, what: string): void {
  if (status === "not-found") throw new StoreError("not-found", `redis: ${what}: not found`);
  if (status === "exists") throw new StoreError("exists", `redis: ${what}: exists`);
}

const byAddress = (x: Account, y: Account): number => (x.address < y.address ? -1 : x.address > y.address ? 1 : 0);

export class RedisDirectory implements Directory {
  constructor(
    private readonly ctx: Context,
    private readonly keys: DirectoryKeys,
  ) {}

  async addDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    const added = await call(this.ctx, "add domain", () => this.ctx.client.sadd(this.keys.domains, d));
    if (added === 0) throw new StoreError("exists", `redis: domain ${d} exists`);
  }

  async removeDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    const k = this.keys;
    const status = await runScript(this.ctx, "remove domain", "mailroomRemoveDomain", [k.domains, k.accounts, k.aliases], [d]);
    if (status === "exists") throw new StoreError("exists", `redis: domain ${d} still has accounts or aliases`);
    refuse(status, `domain ${d}`);
  }

  async hasDomain(domain: string): Promise<boolean> {
    const d = normalizeDomain(domain);
    return (await call(this.ctx, "look up domain", () => this.ctx.client.sismember(this.keys.domains, d))) === 1;
  }

  async listDomains(): Promise<readonly string[]> {
    return (await call(this.ctx, "list domains", () => this.ctx.client.smembers(this.keys.domains))).sort();
  }

  async addAccount(input: { readonly address: string; readonly passwordHash: string }): Promise<Account> {
    const address = normalizeAddress(input.address);
    const json = JSON.stringify({ passwordHash: input.passwordHash } satisfies StoredAccount);
    const status = await runScript(
      this.ctx,
      "add account",
      "mailroomAddAccount",
      [this.keys.domains, this.keys.accounts],
      [address, domainOf(address), json],
    );
    if (status === "not-found") throw new StoreError("not-found", `redis: domain of ${address} is not local`);
    refuse(status, `account ${address}`);
    return { address, mailbox: address, passwordHash: input.passwordHash };
  }

  async getAccount(address: string): Promise<Account | null> {
    const a = normalizeAddress(address);
    const json = await call(this.ctx, "look up account", () => this.ctx.client.hget(this.keys.accounts, a));
    return json === null ? null : toAccount(a, json);
  }

  async setPasswordHash(address: string, passwordHash: string): Promise<void> {
    const a = normalizeAddress(address);
    const json = JSON.stringify({ passwordHash } satisfies StoredAccount);
    refuse(await runScript(this.ctx, "set password", "mailroomUpdateAccount", [this.keys.accounts], [a, json]), `account ${a}`);
  }

  async removeAccount(address: string): Promise<void> {
    const a = normalizeAddress(address);
    const removed = await call(this.ctx, "remove account", () => this.ctx.client.hdel(this.keys.accounts, a));
    if (removed === 0) throw new StoreError("not-found", `redis: no account ${a}`);
  }

  async listAccounts(domain?: string): Promise<readonly Account[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    const all = await call(this.ctx, "list accounts", () => this.ctx.client.hgetall(this.keys.accounts));
    return Object.entries(all)
      .filter(([address]) => d === undefined || domainOf(address) === d)
      .map(([address, json]) => toAccount(address, json))
      .sort(byAddress);
  }

  async addAlias(alias: Alias): Promise<void> {
    const source = normalizeAliasSource(alias.source);
    const target = normalizeAddress(alias.target);
    const k = this.keys;
    const status = await runScript(
      this.ctx,
      "add alias",
      "mailroomAddAlias",
      [k.domains, k.aliases, k.aliasTargets(source), k.aliasSeq],
      [source, target, domainOf(source)],
    );
    if (status === "not-found") throw new StoreError("not-found", `redis: domain of ${source} is not local`);
    refuse(status, `alias ${source} -> ${target}`);
  }

  async removeAlias(source: string, target?: string): Promise<void> {
    const s = normalizeAliasSource(source);
    const args = target === undefined ? [s] : [s, normalizeAddress(target)];
    const removed = Number(
      await runScript(this.ctx, "remove alias", "mailroomRemoveAlias", [this.keys.aliases, this.keys.aliasTargets(s)], args),
    );
    if (removed === 0) throw new StoreError("not-found", `redis: no alias ${s}${target === undefined ? "" : ` -> ${args[1]}`}`);
  }

  async aliasTargets(source: string): Promise<readonly string[]> {
    const s = normalizeAliasSource(source);
    return call(this.ctx, "look up alias", () => this.ctx.client.zrange(this.keys.aliasTargets(s), "0", "-1"));
  }

  /**
   * What resolving `address` needs, one pipelined round trip per alias level instead of one per
   * lookup: an RCPT to an account is one round trip where it was four (the domain twice, the account,
   * its aliases). A catch-all is followed only where `resolveRecipient` follows it (no account and no
   * alias of its own); the last level, one past the deepest hop followed, is read for its domains.
   */
  async recipientLookups(address: string): Promise<RecipientLookups> {
    let normal: string;
    try {
      normal = normalizeAddress(address);
    } catch {
      return this;
    }
    const fetched = new FetchedRecipientLookups(this);
    const seen = new Set([normal]);
    /** Catch-all targets of every domain read so far (a domain is read once). */
    const catchAll = new Map<string, string[]>();
    let level = [normal];
    for (let depth = 0; level.length > 0 && depth <= RECIPIENT_LOOKUP_DEPTH; depth++) {
      const domains = [...new Set(level.map(domainOf))].filter((d) => !catchAll.has(d));
      const batch = this.ctx.client.pipeline();
      for (const a of level) batch.hget(this.keys.accounts, a).zrange(this.keys.aliasTargets(a), "0", "-1");
      for (const d of domains) batch.sismember(this.keys.domains, d).zrange(this.keys.aliasTargets(`@${d}`), "0", "-1");
      const replies = await call(this.ctx, "look up recipient", async () => {
        const results = (await batch.exec()) ?? [];
        return results.map(([error, value]) => {
          if (error) throw error;
          return value;
        });
      });
      let at = 0;
      const read = level.map((a) => {
        const json = replies[at++] as string | null;
        const targets = replies[at++] as string[];
        fetched.address(a, json === null ? null : toAccount(a, json), targets);
        return { a, json, targets };
      });
      for (const d of domains) {
        fetched.domain(d, replies[at++] === 1);
        const targets = replies[at++] as string[];
        fetched.source(`@${d}`, targets);
        catchAll.set(d, targets);
      }
      const next: string[] = [];
      for (const { a, json, targets } of read) {
        const followed = json === null && targets.length === 0 ? (catchAll.get(domainOf(a)) ?? []) : targets;
        for (const t of followed) {
          if (seen.has(t)) continue;
          seen.add(t);
          next.push(t);
        }
      }
      level = next;
    }
    return fetched;
  }

  async listAliases(domain?: string): Promise<readonly Alias[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    const pairs = await call(this.ctx, "list aliases", () => this.ctx.client.zrange(this.keys.aliases, "0", "-1"));
    const out: Alias[] = [];
    for (const pair of pairs) {
      const cut = pair.indexOf("\n");
      const alias = { source: pair.slice(0, cut), target: pair.slice(cut + 1) };
      if (d === undefined || domainOf(alias.source) === d) out.push(alias);
    }
    return out;
  }
}
