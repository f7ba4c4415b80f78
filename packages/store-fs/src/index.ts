import { promises as fsp } from "node:fs";
import { hostname as osHostname } from "node:os";
import { isAbsolute, resolve } from "node:path";
import { StoreError, silentLogger, type Logger, type Store, type StoreAdapter, type StoreOptions } from "@mailroom/store";
import { MailboxCaches, type StoreContext } from "./context.js";
import { attempt } from "./errors.js";
import { DirSyncs } from "./groupcommit.js";
import { mailboxLocator } from "./layout.js";
import { FsStore } from "./store.js";

export interface FsStoreOptions {
  /** The directory holding `<domain>/<local>/` maildirs and `mailroom-directory.json`. Created if missing. */
  readonly root: string;
  /**
   * fsync every message file and directory change before resolving (default true). Turning it off
   * keeps the atomic renames but lets a power cut lose the last seconds of accepted mail.
   */
  readonly fsync?: boolean;
  /** The host part of new file names (default: the OS hostname). */
  readonly hostname?: string;
  /**
   * Messages up to this many octets are read with synchronous calls on the event loop (default
   * 131072): such a file is nearly always in the page cache, where the read takes microseconds and
   * the three thread-pool round trips of an asynchronous open, read and close cost more. Larger
   * messages, and every message when this is 0, are read asynchronously. Set 0 where a cold read can
   * take long (network file systems, spinning disks under load): a synchronous read holds up every
   * other session of the process while it waits.
   */
  readonly syncReadBytes?: number;
  readonly logger?: Logger;
}

const DEFAULT_SYNC_READ_BYTES = 128 * 1024;

export async function createFsStore(options: FsStoreOptions): Promise<Store> {
  const root = resolve(options.root);
  await attempt("create root", root, () => fsp.mkdir(root, { recursive: true }));
  const policy = { fsync: options.fsync ?? true };
  const ctx: StoreContext = {
    root,
    policy,
    host: options.hostname ?? osHostname(),
    logger: options.logger ?? silentLogger,
    cache: new MailboxCaches(),
    prepared: new Set(),
    dirSyncs: new DirSyncs(policy),
    locate: mailboxLocator(root),
    syncReadBytes: options.syncReadBytes ?? DEFAULT_SYNC_READ_BYTES,
  };
  return new FsStore(ctx);
}

/**
 * The path in a `maildir:` URL: `maildir:./data` and `maildir:data` are relative to the working
 * directory, `maildir:/srv/mail` and `maildir:///srv/mail` are absolute.
 */
export function pathFromUrl(url: string): string {
  const match = /^maildir:(.*)$/i.exec(url.trim());
  if (!match) throw new StoreError("invalid-name", `maildir: not a maildir: URL: ${url}`);
  let rest = match[1]!;
  if (rest.startsWith("//")) {
    if (!rest.startsWith("///")) throw new StoreError("invalid-name", `maildir: URL must not name a host: ${url}`);
    rest = decodeURIComponent(rest.slice(2));
  }
  if (rest.length === 0) throw new StoreError("invalid-name", `maildir: URL has no path: ${url}`);
  return isAbsolute(rest) ? rest : resolve(process.cwd(), rest);
}

function optionValue<T>(options: StoreOptions, key: string, type: "boolean" | "string"): T | undefined {
  const value = options[key];
  if (value === undefined) return undefined;
  if (typeof value !== type) throw new StoreError("invalid-name", `maildir: option ${key} must be a ${type}`);
  return value as T;
}

function byteCount(options: StoreOptions, key: string): number | undefined {
  const raw = options[key];
  if (raw === undefined) return undefined;
  // TOML integers may arrive as bigint from some parsers.
  const value = typeof raw === "bigint" ? Number(raw) : raw;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new StoreError("invalid-name", `maildir: option ${key} must be a whole number of octets, 0 or more`);
  }
  return value;
}

export const fsAdapter: StoreAdapter = {
  name: "maildir",
  schemes: ["maildir"],
  optionKeys: ["fsync", "hostname", "sync_read_bytes"],
  async open(url: string, options: StoreOptions = {}): Promise<Store> {
    const fsync = optionValue<boolean>(options, "fsync", "boolean");
    const hostname = optionValue<string>(options, "hostname", "string");
    const syncReadBytes = byteCount(options, "sync_read_bytes");
    return createFsStore({
      root: pathFromUrl(url),
      ...(fsync === undefined ? {} : { fsync }),
      ...(hostname === undefined ? {} : { hostname }),
      ...(syncReadBytes === undefined ? {} : { syncReadBytes }),
    });
  },
};

export default fsAdapter;
export { DIRECTORY_FILE } from "./directory.js";
export { LEASE_FILE } from "./lease.js";
export { JOURNAL_FILE, STATE_FILE } from "./maildir.js";
export { locateMailbox } from "./layout.js";
