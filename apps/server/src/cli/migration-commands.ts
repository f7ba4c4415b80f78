/**
 * `mailroom store copy` and `mailroom import dovecot`: the command-line side of src/migrate (see
 * docs/migration.md). Both print totals on stdout and exit 1 when anything was left undone.
 */
import { resolve } from "node:path";
import { isStoreError, normalizeAddress, type Store } from "@mailroom/store";
import type { ServerConfig } from "../config.js";
import { ConfigError } from "../errors.js";
import { asConfigErrors, checkStoreOptions, createRegistry, openStore, refuseForeignStoreOwner, type AdapterRegistry } from "../registry.js";
import { copyStore, importDovecotMaildir, type CopyReport, type VerifyReport } from "../migrate/index.js";
import type { Output } from "./admin.js";

export interface CopyFlags {
  readonly from?: string;
  readonly to?: string;
  readonly verify: boolean;
  readonly verifyContent: boolean;
  readonly prune: boolean;
}

function registryFor(config: ServerConfig): Promise<AdapterRegistry> {
  return createRegistry({
    adapterModules: config.store.adapterModules,
    baseDir: config.file === null ? process.cwd() : resolve(config.file, ".."),
    where: (key) => config.where(key),
  });
}

/** A store named on the command line: no adapter options, unless it is the configured store itself. */
async function openUrl(config: ServerConfig, registry: AdapterRegistry, url: string, flag: string): Promise<Store> {
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(url)) throw new ConfigError(`${flag}: "${url}" is not a store URL (e.g. maildir:/var/mail or postgres://host/db)`);
  refuseForeignStoreOwner(url, url === config.store.url ? config.where("store.url") : flag);
  const adapter = await registry.adapterFor(url).catch((error: unknown) => {
    throw error instanceof ConfigError ? new ConfigError(error.message.replace(/^.*?store\.url: /, `${flag}: `)) : error;
  });
  const options = url === config.store.url ? config.store.options : {};
  checkStoreOptions(adapter, options, (key) => config.where(key));
  return asConfigErrors(options, { url: flag, option: (key) => config.where(`store.${key}`) }, () => adapter.open(url, options));
}

/** Ctrl-C stops between messages instead of killing the process mid-write. */
function interruptible(): { signal: AbortSignal; done: () => void } {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort(new Error("interrupted; run the same command again to continue"));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  return {
    signal: controller.signal,
    done: () => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    },
  };
}

function printVerify(report: VerifyReport, io: Output): void {
  if (report.ok) {
    io.out(`verify: ok (${report.mailboxes} mailboxes, ${report.messages} messages)`);
    return;
  }
  io.out(`verify: DIFFERENCES (${report.mailboxes} mailboxes, ${report.messages} messages)`);
  for (const domain of report.missingDomains) io.out(`  missing domain ${domain}`);
  for (const account of report.missingAccounts) io.out(`  missing account ${account}`);
  for (const account of report.accountConflicts) io.out(`  account ${account} has another password hash on the target`);
  for (const alias of report.missingAliases) io.out(`  missing alias ${alias.source} -> ${alias.target}`);
  for (const d of report.differences) {
    io.out(
      `  mailbox ${d.mailbox}: ${d.sourceCount} in source, ${d.targetCount} in target; missing ${d.missing.length}, extra ${d.extra.length}, size mismatch ${d.sizeMismatch.length}, content mismatch ${d.contentMismatch.length}, retrieved on one side only ${d.retrievalMismatch.length}`,
    );
  }
}

function printCopy(report: CopyReport, io: Output): void {
  const t = (x: { copied: number; skipped: number }) => `${x.copied} copied, ${x.skipped} skipped`;
  io.out(`domains: ${t(report.domains)}`);
  io.out(`accounts: ${t(report.accounts)}`);
  io.out(`aliases: ${t(report.aliases)}`);
  io.out(`mailboxes: ${report.mailboxes}`);
  io.out(
    `messages: ${t(report.messages)}, ${report.messages.failed} failed, ${report.messages.pruned} pruned, ${report.messages.retrieved} marked retrieved`,
  );
  io.out(`bytes: ${report.bytes}`);
  for (const address of report.accountConflicts) io.out(`conflict: account ${address} has another password hash on the target (left as it is)`);
  for (const c of report.sizeConflicts) io.out(`conflict: ${c.mailbox} ${c.uid} is ${c.source} octets in the source, ${c.target} in the target`);
  for (const f of report.failures) io.out(`failed: ${f.mailbox} ${f.uid}: ${f.error}`);
  if (report.verify) printVerify(report.verify, io);
}

export async function storeCopy(config: ServerConfig, flags: CopyFlags, io: Output): Promise<number> {
  if (flags.to === undefined) throw new ConfigError("store copy needs --to URL (and --from URL, default: the configured store)");
  const registry = await registryFor(config);
  const fromUrl = flags.from ?? config.store.url;
  if (fromUrl === flags.to) throw new ConfigError("--from and --to name the same store");
  const from = await openUrl(config, registry, fromUrl, "--from");
  const { signal, done } = interruptible();
  try {
    const to = await openUrl(config, registry, flags.to, "--to");
    try {
      const report = await copyStore(from, to, {
        verify: flags.verify || flags.verifyContent,
        verifyContent: flags.verifyContent,
        prune: flags.prune,
        signal,
      });
      printCopy(report, io);
      const clean = report.failures.length === 0 && (report.verify === undefined || report.verify.ok);
      return clean ? 0 : 1;
    } finally {
      await to.close();
    }
  } finally {
    done();
    await from.close();
  }
}

export interface ImportFlags {
  readonly maildir?: string;
  readonly address?: string;
  readonly uidlFormat?: string;
}

export async function importDovecot(config: ServerConfig, flags: ImportFlags, io: Output): Promise<number> {
  if (flags.maildir === undefined || flags.address === undefined) {
    throw new ConfigError("import dovecot needs --maildir DIR and --address ADDRESS");
  }
  let address: string;
  try {
    address = normalizeAddress(flags.address);
  } catch (error) {
    if (isStoreError(error)) throw new ConfigError(`--address: ${error.message}`);
    throw error;
  }
  refuseForeignStoreOwner(config.store.url, config.where("store.url"));
  const { store } = await openStore(config);
  const { signal, done } = interruptible();
  try {
    const account = await store.directory.getAccount(address);
    if (!account) throw new Error(`no user ${address}; add it first: mailroom user add ${address}`);
    const report = await importDovecotMaildir(store, {
      maildir: resolve(flags.maildir),
      mailbox: account.mailbox,
      ...(flags.uidlFormat === undefined ? {} : { uidlFormat: flags.uidlFormat }),
      signal,
    });
    io.out(`messages: ${report.messages} found, ${report.imported} imported, ${report.skipped} skipped, ${report.failures.length} failed`);
    io.out(`bytes: ${report.bytes}`);
    if (report.unlisted > 0) io.out(`not yet numbered by Dovecot: ${report.unlisted} (given the UIDs Dovecot would have given next)`);
    if (report.missingFiles > 0) io.out(`uidlist entries without a file: ${report.missingFiles} (skipped)`);
    for (const m of report.sizeMismatches) io.out(`size differs: ${m.file}: Dovecot said ${m.expected}, stored ${m.actual}`);
    for (const f of report.failures) io.out(`failed: ${f.file}: ${f.error}`);
    return report.failures.length === 0 ? 0 : 1;
  } finally {
    done();
    await store.close();
  }
}
