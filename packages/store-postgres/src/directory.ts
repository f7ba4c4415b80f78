import {
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
import type { Db } from "./db.js";
import { fetchRecipientLookups, recipientLookupsSql } from "./lookups.js";

interface AccountRow {
  address: string;
  mailbox: string;
  password_hash: string;
}

const toAccount = (row: AccountRow): Account => ({
  address: row.address,
  mailbox: row.mailbox,
  passwordHash: row.password_hash,
});

// Sorted in JavaScript, not by the database collation, so the order is the same as every other store's.
const byString = (x: string, y: string): number => (x < y ? -1 : x > y ? 1 : 0);

export class PostgresDirectory implements Directory {
  private readonly sql;

  constructor(
    private readonly db: Db,
    s: string,
  ) {
    this.sql = {
      addDomain: `INSERT INTO ${s}.domains (name) VALUES ($1)`,
      // One statement, so no account can sneak in between the check and the delete; the foreign keys
      // catch the rest.
      removeDomain: `
        DELETE FROM ${s}.domains d WHERE d.name = $1
          AND NOT EXISTS (SELECT 1 FROM ${s}.accounts a WHERE a.domain = d.name)
          AND NOT EXISTS (SELECT 1 FROM ${s}.aliases l WHERE l.domain = d.name)`,
      hasDomain: `SELECT 1 FROM ${s}.domains WHERE name = $1`,
      listDomains: `SELECT name FROM ${s}.domains`,
      addAccount: `
        INSERT INTO ${s}.accounts (address, domain, mailbox, password_hash)
        SELECT $1, $2, $1, $3 WHERE EXISTS (SELECT 1 FROM ${s}.domains WHERE name = $2)
        RETURNING address, mailbox, password_hash`,
      getAccount: `SELECT address, mailbox, password_hash FROM ${s}.accounts WHERE address = $1`,
      setPasswordHash: `UPDATE ${s}.accounts SET password_hash = $2 WHERE address = $1`,
      removeAccount: `DELETE FROM ${s}.accounts WHERE address = $1`,
      listAccounts: `SELECT address, mailbox, password_hash FROM ${s}.accounts WHERE $1::text IS NULL OR domain = $1`,
      addAlias: `
        INSERT INTO ${s}.aliases (source, target, domain)
        SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM ${s}.domains WHERE name = $3)`,
      removeAlias: `DELETE FROM ${s}.aliases WHERE source = $1 AND ($2::text IS NULL OR target = $2)`,
      aliasTargets: `SELECT target FROM ${s}.aliases WHERE source = $1 ORDER BY seq`,
      listAliases: `SELECT source, target FROM ${s}.aliases WHERE $1::text IS NULL OR domain = $1 ORDER BY seq`,
      recipientLookups: recipientLookupsSql(s),
    };
  }

  async addDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    await this.db.query("add domain", this.sql.addDomain, [d]);
  }

  async removeDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    const result = await this.db.query("remove domain", this.sql.removeDomain, [d], { "23503": "exists" });
    if (result.rowCount === 1) return;
    if (!(await this.hasDomain(d))) throw new StoreError("not-found", `postgres: no domain ${d}`);
    throw new StoreError("exists", `postgres: domain ${d} still has accounts or aliases`);
  }

  async hasDomain(domain: string): Promise<boolean> {
    const result = await this.db.query("look up domain", this.sql.hasDomain, [normalizeDomain(domain)]);
    return (result.rowCount ?? 0) > 0;
  }

  async listDomains(): Promise<readonly string[]> {
    const result = await this.db.query<{ name: string }>("list domains", this.sql.listDomains);
    return result.rows.map((r) => r.name).sort(byString);
  }

  async addAccount(input: { readonly address: string; readonly passwordHash: string }): Promise<Account> {
    const address = normalizeAddress(input.address);
    // A foreign key violation means the domain was removed while we inserted.
    const result = await this.db.query<AccountRow>(
      "add account",
      this.sql.addAccount,
      [address, domainOf(address), input.passwordHash],
      { "23503": "not-found" },
    );
    const row = result.rows[0];
    if (!row) throw new StoreError("not-found", `postgres: domain of ${address} is not local`);
    return toAccount(row);
  }

  async getAccount(address: string): Promise<Account | null> {
    const result = await this.db.query<AccountRow>("look up account", this.sql.getAccount, [normalizeAddress(address)]);
    const row = result.rows[0];
    return row ? toAccount(row) : null;
  }

  async setPasswordHash(address: string, passwordHash: string): Promise<void> {
    const a = normalizeAddress(address);
    const result = await this.db.query("set password", this.sql.setPasswordHash, [a, passwordHash]);
    if (result.rowCount === 0) throw new StoreError("not-found", `postgres: no account ${a}`);
  }

  async removeAccount(address: string): Promise<void> {
    const a = normalizeAddress(address);
    const result = await this.db.query("remove account", this.sql.removeAccount, [a]);
    if (result.rowCount === 0) throw new StoreError("not-found", `postgres: no account ${a}`);
  }

  async listAccounts(domain?: string): Promise<readonly Account[]> {
    const d = domain === undefined ? null : normalizeDomain(domain);
    const result = await this.db.query<AccountRow>("list accounts", this.sql.listAccounts, [d]);
    return result.rows.map(toAccount).sort((x, y) => byString(x.address, y.address));
  }

  async addAlias(alias: Alias): Promise<void> {
    const source = normalizeAliasSource(alias.source);
    const target = normalizeAddress(alias.target);
    const result = await this.db.query("add alias", this.sql.addAlias, [source, target, domainOf(source)], {
      "23503": "not-found",
    });
    if (result.rowCount === 0) throw new StoreError("not-found", `postgres: domain of ${source} is not local`);
  }

  async removeAlias(source: string, target?: string): Promise<void> {
    const s = normalizeAliasSource(source);
    const t = target === undefined ? null : normalizeAddress(target);
    const result = await this.db.query("remove alias", this.sql.removeAlias, [s, t]);
    if (result.rowCount === 0) throw new StoreError("not-found", `postgres: no alias ${s}`);
  }

  async aliasTargets(source: string): Promise<readonly string[]> {
    const result = await this.db.query<{ target: string }>("look up alias", this.sql.aliasTargets, [
      normalizeAliasSource(source),
    ]);
    return result.rows.map((r) => r.target);
  }

  recipientLookups(address: string): Promise<RecipientLookups> {
    return fetchRecipientLookups(this.db, this.sql.recipientLookups, this, address);
  }

  async listAliases(domain?: string): Promise<readonly Alias[]> {
    const d = domain === undefined ? null : normalizeDomain(domain);
    const result = await this.db.query<{ source: string; target: string }>("list aliases", this.sql.listAliases, [d]);
    return result.rows.map((r) => ({ source: r.source, target: r.target }));
  }
}
