import { promises as fsp } from "node:fs";
import { hostname as osHostname } from "node:os";
import { isAbsolute, resolve } from "node:path";
import { StoreError, silentLogger, type Logger, type Store, type StoreAdapter, type StoreOptions } from "@mailroom/store";
import { MailboxCaches, type StoreContext } from "./context.js";
import { attempt } from "./errors.js";
import { PRIVATE_DIR, groupMayReplaceOwnFiles, mailModesOf } from "./fsutil.js";
import { DirSyncs } from "./groupcommit.js";
import { DeliveryLog } from "./deliverylog.js";
import { FileThread } from "./filethread.js";
import { recoverDeliveryLogs, retryLeftLogs } from "./logrecovery.js";
import { BulkSync } from "./syncfs.js";
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
   * messages, and every message when this is 0, are read asynchronously; so are the outbound queue's
   * item files when a scan reads them all. Set 0 where a cold read can take long (network file
   * systems, spinning disks under load): a synchronous read holds up every other session of the
   * process while it waits.
   */
  readonly syncReadBytes?: number;
  /**
   * Messages up to this many octets (default 32768) are made durable through the delivery log: a
   * copy appended to `<root>/.log/`, where the concurrent deliveries share one fdatasync, instead of
   * an fsync of each message file and its new/ directory. The files themselves are made durable in
   * bulk about once a second, and a log left by a crash is replayed when the store is opened. 0 turns
   * the log off (every message fsynced on its own). Without `fsync` there is no log either.
   */
  readonly deliveryLogBytes?: number;
  /** How long the delivery log collects before its files are made durable and it is deleted (default 1000 ms). */
  readonly deliveryLogMs?: number;
  /**
   * Messages that go through the delivery log have their files created, written and renamed by one
   * helper thread per process, with synchronous calls (default true). Each asynchronous file call is
   * a round trip through the thread pool that costs the event loop more than the call itself; the
   * helper thread lets concurrent deliveries share those hand-offs. false keeps every call on the
   * thread pool.
   */
  readonly fileThread?: boolean;
  readonly logger?: Logger;
}

const DEFAULT_SYNC_READ_BYTES = 128 * 1024;
/**
 * Measured on the benchmark machine: the log wins at 4 KB (+8–25 % msg/s), breaks even
 * around 48 KB and loses at 100 KB (-30 %), where writing every octet twice costs more disk
 * bandwidth than the flushes it saves.
 */
const DEFAULT_DELIVERY_LOG_BYTES = 32 * 1024;

export async function createFsStore(options: FsStoreOptions): Promise<Store> {
  const root = resolve(options.root);
  await attempt("create root", root, () => fsp.mkdir(root, { recursive: true, mode: PRIVATE_DIR }));
  const policy = { fsync: options.fsync ?? true };
  const logger = options.logger ?? silentLogger;
  const bulk = new BulkSync((message) => logger.warn(message));
  const rootMode = (await attempt("read root", root, () => fsp.stat(root))).mode;
  const mailModes = mailModesOf(rootMode);
  if (groupMayReplaceOwnFiles(rootMode)) {
    logger.warn(
      { root, mode: (rootMode & 0o7777).toString(8) },
      "maildir: the store's root is group-writable without the sticky bit: a member of its group could replace the directory file (accounts and password hashes); chmod +t it",
    );
  }
  // Before anything else touches the maildirs: what a crashed process acknowledged becomes durable.
  const recovery = { root, policy, mailModes, logger, bulk };
  const left = await attempt("replay delivery log", root, () => recoverDeliveryLogs(recovery));
  const logBytes = options.deliveryLogBytes ?? DEFAULT_DELIVERY_LOG_BYTES;
  const deliveryLog =
    policy.fsync && logBytes > 0
      ? new DeliveryLog(root, policy, bulk, logger, {
          maxMessageBytes: logBytes,
          ...(options.fileThread === false ? {} : { thread: () => FileThread.shared() }),
          ...(options.deliveryLogMs === undefined ? {} : { checkpointMs: options.deliveryLogMs }),
        })
      : null;
  const ctx: StoreContext = {
    root,
    policy,
    mailModes,
    deliveryLog,
    host: options.hostname ?? osHostname(),
    logger,
    cache: new MailboxCaches(),
    prepared: new Set(),
    dirSyncs: new DirSyncs(policy),
    locate: mailboxLocator(root),
    syncReadBytes: options.syncReadBytes ?? DEFAULT_SYNC_READ_BYTES,
    bulk,
    laterRecovery: left > 0 ? retryLeftLogs(recovery) : null,
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
  optionKeys: ["fsync", "hostname", "sync_read_bytes", "delivery_log_bytes", "file_thread"],
  async open(url: string, options: StoreOptions = {}): Promise<Store> {
    const fsync = optionValue<boolean>(options, "fsync", "boolean");
    const hostname = optionValue<string>(options, "hostname", "string");
    const syncReadBytes = byteCount(options, "sync_read_bytes");
    const deliveryLogBytes = byteCount(options, "delivery_log_bytes");
    const fileThread = optionValue<boolean>(options, "file_thread", "boolean");
    return createFsStore({
      root: pathFromUrl(url),
      ...(fsync === undefined ? {} : { fsync }),
      ...(hostname === undefined ? {} : { hostname }),
      ...(syncReadBytes === undefined ? {} : { syncReadBytes }),
      ...(deliveryLogBytes === undefined ? {} : { deliveryLogBytes }),
      ...(fileThread === undefined ? {} : { fileThread }),
    });
  },
};

export default fsAdapter;
export { DIRECTORY_FILE } from "./directory.js";
export { LEASE_FILE } from "./lease.js";
export { JOURNAL_FILE, STATE_FILE } from "./maildir.js";
export { locateMailbox } from "./layout.js";
