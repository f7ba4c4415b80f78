/**
 * The administration commands: users, domains, aliases, migrations. Each opens the configured store,
 * does one thing, prints the result on stdout and closes the store.
 */
import { resolve } from "node:path";
import {
  domainOf,
  hashPassword,
  isStoreError,
  normalizeAddress,
  normalizeAliasSource,
  normalizeDomain,
  type Store,
  type StoreAdapter,
  type StoreOptions,
} from "@mailroom/store";
import type { ServerConfig } from "../config.js";
import { ConfigError } from "../errors.js";
import { asConfigErrors, checkStoreOptions, createRegistry, openStore, refuseForeignStoreOwner } from "../registry.js";
import { ensureDevelopmentDomain } from "../development.js";
import { readNewPassword } from "./password.js";

export interface Output {
  out(line: string): void;
}

/** Turns a bad name typed on the command line into a usage error (exit 2) instead of a run-time one. */
function checked<T>(what: string, normalize: (input: string) => T, input: string): T {
  try {
    return normalize(input);
  } catch (error) {
    if (isStoreError(error) && error.code === "invalid-name") throw new ConfigError(`${what}: ${error.message}`);
    throw error;
  }
}

/** Store errors the operator can act on, reworded for the command line. */
function explain(error: unknown, subject: string): never {
  if (isStoreError(error)) {
    switch (error.code) {
      case "exists":
        throw new Error(`${subject} already exists`, { cause: error });
      case "not-found":
        throw new Error(`${error.message}`, { cause: error });
      case "invalid-name":
        throw new ConfigError(error.message);
      default:
        break;
    }
  }
  throw error;
}

async function withStore<T>(config: ServerConfig, action: (store: Store) => Promise<T>): Promise<T> {
  refuseForeignStoreOwner(config.store.url, config.where("store.url"));
  const { store } = await openStore(config);
  try {
    await ensureDevelopmentDomain(store, config);
    return await action(store);
  } finally {
    await store.close();
  }
}

export async function userAdd(config: ServerConfig, address: string, passwordStdin: boolean, io: Output): Promise<void> {
  const normalized = checked("address", normalizeAddress, address);
  // Ask before touching the store, so a typo in the prompt does not leave half-done work behind.
  const passwordHash = await hashPassword(await readNewPassword(passwordStdin));
  await withStore(config, async (store) => {
    const domain = normalized.slice(normalized.lastIndexOf("@") + 1);
    if (!(await store.directory.hasDomain(domain))) {
      throw new Error(`the domain ${domain} is not local; add it first: mailroom domain add ${domain}`);
    }
    await store.directory.addAccount({ address: normalized, passwordHash }).catch((e: unknown) => explain(e, `user ${normalized}`));
  });
  io.out(`added user ${normalized}`);
}

export async function userPasswd(config: ServerConfig, address: string, passwordStdin: boolean, io: Output): Promise<void> {
  const normalized = checked("address", normalizeAddress, address);
  const passwordHash = await hashPassword(await readNewPassword(passwordStdin));
  await withStore(config, async (store) => {
    if (!(await store.directory.getAccount(normalized))) throw new Error(`no user ${normalized}`);
    await store.directory.setPasswordHash(normalized, passwordHash).catch((e: unknown) => explain(e, `user ${normalized}`));
  });
  io.out(`changed the password of ${normalized}`);
}

export async function userDel(config: ServerConfig, address: string, io: Output): Promise<void> {
  const normalized = checked("address", normalizeAddress, address);
  await withStore(config, async (store) => {
    if (!(await store.directory.getAccount(normalized))) throw new Error(`no user ${normalized}`);
    await store.directory.removeAccount(normalized).catch((e: unknown) => explain(e, `user ${normalized}`));
  });
  io.out(`removed user ${normalized} (the mailbox's messages are kept)`);
}

export async function userList(config: ServerConfig, domain: string | undefined, io: Output): Promise<void> {
  const only = domain === undefined ? undefined : checked("domain", normalizeDomain, domain);
  const accounts = await withStore(config, (store) => store.directory.listAccounts(only));
  for (const account of accounts) io.out(account.address);
}

export async function domainAdd(config: ServerConfig, domain: string, io: Output): Promise<void> {
  const normalized = checked("domain", normalizeDomain, domain);
  await withStore(config, (store) => store.directory.addDomain(normalized).catch((e: unknown) => explain(e, `domain ${normalized}`)));
  io.out(`added domain ${normalized}`);
}

export async function domainDel(config: ServerConfig, domain: string, io: Output): Promise<void> {
  const normalized = checked("domain", normalizeDomain, domain);
  await withStore(config, async (store) => {
    if (!(await store.directory.hasDomain(normalized))) throw new Error(`no domain ${normalized}`);
    await store.directory.removeDomain(normalized).catch((error: unknown) => {
      if (isStoreError(error) && error.code === "exists") {
        throw new Error(`domain ${normalized} still has users or aliases; remove them first`, { cause: error });
      }
      explain(error, `domain ${normalized}`);
    });
  });
  io.out(`removed domain ${normalized}`);
}

export async function domainList(config: ServerConfig, io: Output): Promise<void> {
  const domains = await withStore(config, (store) => store.directory.listDomains());
  for (const domain of domains) io.out(domain);
}

export async function aliasAdd(config: ServerConfig, source: string, target: string, io: Output): Promise<void> {
  const from = checked("alias source", normalizeAliasSource, source);
  const to = checked("alias target", normalizeAddress, target);
  await withStore(config, async (store) => {
    const sourceDomain = domainOf(from);
    if (!(await store.directory.hasDomain(sourceDomain))) {
      throw new Error(`the domain ${sourceDomain} is not local; add it first: mailroom domain add ${sourceDomain}`);
    }
    // Local delivery skips targets on other domains, so such an alias would answer 250 and deliver
    // nothing there: refuse it here rather than lose mail later.
    const targetDomain = domainOf(to);
    if (!(await store.directory.hasDomain(targetDomain))) {
      throw new Error(`the target ${to} is not in a local domain; aliases deliver only to local addresses (forwarding to other domains is not supported)`);
    }
    await store.directory.addAlias({ source: from, target: to }).catch((e: unknown) => explain(e, `alias ${from} -> ${to}`));
  });
  io.out(`added alias ${from} -> ${to}`);
}

export async function aliasDel(config: ServerConfig, source: string, target: string | undefined, io: Output): Promise<void> {
  const from = checked("alias source", normalizeAliasSource, source);
  const to = target === undefined ? undefined : checked("alias target", normalizeAddress, target);
  await withStore(config, (store) =>
    store.directory.removeAlias(from, to).catch((error: unknown) => {
      if (isStoreError(error) && error.code === "not-found") {
        throw new Error(`no alias ${from}${to === undefined ? "" : ` -> ${to}`}`, { cause: error });
      }
      explain(error, `alias ${from}`);
    }),
  );
  io.out(`removed alias ${from}${to === undefined ? "" : ` -> ${to}`}`);
}

export async function aliasList(config: ServerConfig, domain: string | undefined, io: Output): Promise<void> {
  const only = domain === undefined ? undefined : checked("domain", normalizeDomain, domain);
  const aliases = await withStore(config, (store) => store.directory.listAliases(only));
  for (const alias of aliases) io.out(`${alias.source} -> ${alias.target}`);
}

interface Migratable extends StoreAdapter {
  migrate(url: string, options?: StoreOptions): Promise<{ readonly applied: readonly number[]; readonly version: number }>;
}

const canMigrate = (adapter: StoreAdapter): adapter is Migratable => typeof (adapter as Partial<Migratable>).migrate === "function";

export async function migrate(config: ServerConfig, io: Output): Promise<void> {
  const registry = await createRegistry({
    adapterModules: config.store.adapterModules,
    baseDir: config.file === null ? process.cwd() : resolve(config.file, ".."),
    where: (key) => config.where(key),
  });
  const adapter = await registry.adapterFor(config.store.url);
  checkStoreOptions(adapter, config.store.options, (key) => config.where(key));
  if (!canMigrate(adapter)) {
    io.out(`nothing to do: the ${adapter.name} store has no schema to migrate`);
    return;
  }
  const names = { url: config.where("store.url"), option: (key: string) => config.where(`store.${key}`) };
  const result = await asConfigErrors(config.store.options, names, () => adapter.migrate(config.store.url, config.store.options));
  io.out(
    result.applied.length === 0
      ? `the ${adapter.name} schema is up to date (version ${result.version})`
      : `applied migration${result.applied.length > 1 ? "s" : ""} ${result.applied.join(", ")}; the ${adapter.name} schema is at version ${result.version}`,
  );
}
