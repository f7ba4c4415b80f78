import { join } from "node:path";
import {
  StoreError,
  domainOf,
  normalizeAddress,
  normalizeAliasSource,
  normalizeDomain,
  type Account,
  type Alias,
  type Directory,
} from "@mailroom/store";
import { JsonFile, type StoreContext } from "./context.js";
import { attempt } from "./errors.js";
import { withDirLock, writeFileAtomic } from "./fsutil.js";

/**
 * Domains, accounts (password hashes only) and aliases in one file, `<root>/mailroom-directory.json`.
 * Writers take the mkdir lock `mailroom-directory.lock`, re-read the file, change it and replace it
 * atomically; readers re-read it whenever its inode, size or mtime changed, so a change made by
 * another process (the CLI while the server runs) is seen on the next lookup.
 */
export const DIRECTORY_FILE = "mailroom-directory.json";
const DIRECTORY_LOCK = "mailroom-directory.lock";

interface Data {
  domains: string[];
  accounts: Account[];
  aliases: Alias[];
}

/** The file's lists plus lookup tables built once per load, so a lookup does not scan every account. */
interface Loaded extends Data {
  readonly domainSet: ReadonlySet<string>;
  readonly accountByAddress: ReadonlyMap<string, Account>;
  readonly targetsBySource: ReadonlyMap<string, readonly string[]>;
}

function indexed(data: Data): Loaded {
  const targetsBySource = new Map<string, string[]>();
  for (const alias of data.aliases) {
    const targets = targetsBySource.get(alias.source);
    if (targets) targets.push(alias.target);
    else targetsBySource.set(alias.source, [alias.target]);
  }
  return {
    ...data,
    domainSet: new Set(data.domains),
    // The first entry wins, as a scan of the list would find it.
    accountByAddress: new Map([...data.accounts].reverse().map((a) => [a.address, a])),
    targetsBySource,
  };
}

function parseData(raw: unknown): Loaded {
  const value = (raw ?? {}) as Partial<Record<keyof Data, unknown>>;
  const list = <T>(x: unknown, ok: (item: unknown) => item is T): T[] => (Array.isArray(x) ? x.filter(ok) : []);
  return indexed({
    domains: list(value.domains, (d): d is string => typeof d === "string"),
    accounts: list(
      value.accounts,
      (a): a is Account =>
        typeof (a as Account)?.address === "string" &&
        typeof (a as Account).mailbox === "string" &&
        typeof (a as Account).passwordHash === "string",
    ).map((a) => ({ address: a.address, mailbox: a.mailbox, passwordHash: a.passwordHash })),
    aliases: list(
      value.aliases,
      (a): a is Alias => typeof (a as Alias)?.source === "string" && typeof (a as Alias).target === "string",
    ).map((a) => ({ source: a.source, target: a.target })),
  });
}

const byAddress = (x: Account, y: Account): number => (x.address < y.address ? -1 : x.address > y.address ? 1 : 0);

export class FsDirectory implements Directory {
  private readonly file: JsonFile<Loaded>;

  constructor(private readonly ctx: StoreContext) {
    this.file = new JsonFile(join(ctx.root, DIRECTORY_FILE), parseData, () => indexed({ domains: [], accounts: [], aliases: [] }));
  }

  private read(): Promise<Loaded> {
    return attempt("read directory", this.file.path, () => this.file.load());
  }

  /** Read-modify-write under the inter-process lock. */
  private change(mutate: (data: Data) => void): Promise<void> {
    return attempt("update directory", this.file.path, () =>
      withDirLock(join(this.ctx.root, DIRECTORY_LOCK), async () => {
        this.file.invalidate();
        const current = await this.file.load();
        const data: Data = {
          domains: [...current.domains],
          accounts: [...current.accounts],
          aliases: [...current.aliases],
        };
        mutate(data);
        const text = `${JSON.stringify({ version: 1, ...data }, null, 2)}\n`;
        await writeFileAtomic(this.file.path, text, this.ctx.policy);
        this.file.invalidate();
      }),
    );
  }

  async addDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    await this.change((data) => {
      if (data.domains.includes(d)) throw new StoreError("exists", `maildir: domain ${d} exists`);
      data.domains.push(d);
      data.domains.sort();
    });
  }

  async removeDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    await this.change((data) => {
      if (!data.domains.includes(d)) throw new StoreError("not-found", `maildir: no domain ${d}`);
      if (data.accounts.some((a) => domainOf(a.address) === d) || data.aliases.some((a) => domainOf(a.source) === d)) {
        throw new StoreError("exists", `maildir: domain ${d} still has accounts or aliases`);
      }
      data.domains = data.domains.filter((x) => x !== d);
    });
  }

  async hasDomain(domain: string): Promise<boolean> {
    return (await this.read()).domainSet.has(normalizeDomain(domain));
  }

  async listDomains(): Promise<readonly string[]> {
    return [...(await this.read()).domains].sort();
  }

  async addAccount(input: { readonly address: string; readonly passwordHash: string }): Promise<Account> {
    const address = normalizeAddress(input.address);
    const account: Account = { address, mailbox: address, passwordHash: input.passwordHash };
    await this.change((data) => {
      if (!data.domains.includes(domainOf(address))) {
        throw new StoreError("not-found", `maildir: domain of ${address} is not local`);
      }
      if (data.accounts.some((a) => a.address === address)) {
        throw new StoreError("exists", `maildir: account ${address} exists`);
      }
      data.accounts.push(account);
      data.accounts.sort(byAddress);
    });
    return account;
  }

  async getAccount(address: string): Promise<Account | null> {
    const a = normalizeAddress(address);
    return (await this.read()).accountByAddress.get(a) ?? null;
  }

  async setPasswordHash(address: string, passwordHash: string): Promise<void> {
    const a = normalizeAddress(address);
    await this.change((data) => {
      const index = data.accounts.findIndex((x) => x.address === a);
      if (index < 0) throw new StoreError("not-found", `maildir: no account ${a}`);
      data.accounts[index] = { ...data.accounts[index]!, passwordHash };
    });
  }

  async removeAccount(address: string): Promise<void> {
    const a = normalizeAddress(address);
    await this.change((data) => {
      const before = data.accounts.length;
      data.accounts = data.accounts.filter((x) => x.address !== a);
      if (data.accounts.length === before) throw new StoreError("not-found", `maildir: no account ${a}`);
    });
  }

  async listAccounts(domain?: string): Promise<readonly Account[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    return (await this.read()).accounts.filter((a) => d === undefined || domainOf(a.address) === d).sort(byAddress);
  }

  async addAlias(alias: Alias): Promise<void> {
    const source = normalizeAliasSource(alias.source);
    const target = normalizeAddress(alias.target);
    await this.change((data) => {
      if (!data.domains.includes(domainOf(source))) {
        throw new StoreError("not-found", `maildir: domain of ${source} is not local`);
      }
      if (data.aliases.some((a) => a.source === source && a.target === target)) {
        throw new StoreError("exists", `maildir: alias ${source} -> ${target} exists`);
      }
      data.aliases.push({ source, target });
    });
  }

  async removeAlias(source: string, target?: string): Promise<void> {
    const s = normalizeAliasSource(source);
    const t = target === undefined ? undefined : normalizeAddress(target);
    await this.change((data) => {
      const before = data.aliases.length;
      data.aliases = data.aliases.filter((a) => !(a.source === s && (t === undefined || a.target === t)));
      if (data.aliases.length === before) throw new StoreError("not-found", `maildir: no alias ${s}`);
    });
  }

  async aliasTargets(source: string): Promise<readonly string[]> {
    const s = normalizeAliasSource(source);
    return [...((await this.read()).targetsBySource.get(s) ?? [])];
  }

  async listAliases(domain?: string): Promise<readonly Alias[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    return (await this.read()).aliases.filter((a) => d === undefined || domainOf(a.source) === d);
  }
}
