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
import { SpaceReserve, statfsFreeSpace } from "./reserve.js";

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
  /**
   * Free space, in MiB, kept on the store's file system for existing mail (default 64, or a
   * sixteenth of the file system where that is less; 0 turns it off; a value given is kept as given).
   * Deliveries, appends and enqueues are refused with "no-space" (SMTP 452 4.3.1, the sender
   * retries) once the space an unprivileged user may still write falls below it, so that POP3 users
   * can still log in and delete: a login writes a lease file, a QUIT with deletions a journal. Mail
   * already acknowledged (`accepted: true`) is never refused by it. Free space is measured with
   * `statfs` at most once a second, and again (no sooner than 50 ms after the last) once this
   * process let through a quarter of the headroom, so that up to four processes on one file system
   * keep the reserve between them; where the runtime has no `statfs` the reserve is not enforced
   * (said once in the log).
   */
  readonly minFreeMb?: number;
  readonly logger?: Logger;
}

const DEFAULT_SYNC_READ_BYTES = 128 * 1024;
/**
 * Measured on the benchmark machine: the log wins at 4 KB (+8–25 % msg/s), breaks even
 * around 48 KB and loses at 100 KB (-30 %), where writing every octet twice costs more disk
 * bandwidth than the flushes it saves.
 */
const DEFAULT_DELIVERY_LOG_BYTES = 32 * 1024;
/**
 * Room for some sixteen thousand of the small files POP3 sessions and the store itself still have to
 * write on a full disk (a lease or a journal takes one 4 KiB block), for a few seconds of a busy
 * server's delivery logs, and for anything else on the same file system that fails at ENOSPC (the
 * server's own log); and still a negligible share of any disk that holds mail. On a file system of
 * less than 1 GiB the default is a sixteenth of it instead (see SpaceReserve's fitToDisk).
 */
const DEFAULT_MIN_FREE_MB = 64;
const MIB = 1024 * 1024;

/** A reserve in MiB as octets, or a clear error naming `key`. */
function reserveOctets(value: unknown, key: string): number {
  // TOML integers may arrive as bigint from some parsers.
  const mb = typeof value === "bigint" ? Number(value) : value;
  if (typeof mb !== "number" || !Number.isSafeInteger(mb) || mb < 0 || !Number.isSafeInteger(mb * MIB)) {
    throw new StoreError("invalid-name", `maildir: option ${key} must be a whole number of MiB, 0 or more (0 turns the free-space reserve off)`);
  }
  return mb * MIB;
}

export async function createFsStore(options: FsStoreOptions): Promise<Store> {
  const root = resolve(options.root);
  const reserve = reserveOctets(options.minFreeMb ?? DEFAULT_MIN_FREE_MB, "minFreeMb");
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
  let space: SpaceReserve | null = null;
  if (reserve > 0) {
    const measure = statfsFreeSpace();
    if (measure === null) {
      // Said once per store; loudly only to an operator who asked for a reserve in so many words.
      const note = "maildir: this runtime has no fs.statfs: the free-space reserve (min_free_mb) is not enforced";
      if (options.minFreeMb === undefined) logger.debug({ root }, note);
      else logger.warn({ root }, note);
    } else {
      // The default gives way on a small file system (a sixteenth of it); a reserve set is kept as set.
      space = new SpaceReserve(root, reserve, measure, logger, { fitToDisk: options.minFreeMb === undefined });
    }
  }
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
    space,
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
  optionKeys: ["fsync", "hostname", "sync_read_bytes", "delivery_log_bytes", "file_thread", "min_free_mb"],
  async open(url: string, options: StoreOptions = {}): Promise<Store> {
    const fsync = optionValue<boolean>(options, "fsync", "boolean");
    const hostname = optionValue<string>(options, "hostname", "string");
    const syncReadBytes = byteCount(options, "sync_read_bytes");
    const deliveryLogBytes = byteCount(options, "delivery_log_bytes");
    const fileThread = optionValue<boolean>(options, "file_thread", "boolean");
    const minFree = options["min_free_mb"];
    const minFreeMb = minFree === undefined ? undefined : reserveOctets(minFree, "min_free_mb") / MIB;
    return createFsStore({
      root: pathFromUrl(url),
      ...(fsync === undefined ? {} : { fsync }),
      ...(hostname === undefined ? {} : { hostname }),
      ...(syncReadBytes === undefined ? {} : { syncReadBytes }),
      ...(deliveryLogBytes === undefined ? {} : { deliveryLogBytes }),
      ...(fileThread === undefined ? {} : { fileThread }),
      ...(minFreeMb === undefined ? {} : { minFreeMb }),
    });
  },
};

export default fsAdapter;
export { DIRECTORY_FILE } from "./directory.js";
export { LEASE_FILE } from "./lease.js";
export { JOURNAL_FILE, STATE_FILE } from "./maildir.js";
export { locateMailbox } from "./layout.js";
