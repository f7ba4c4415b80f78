import { createHash } from "node:crypto";
import { hasStoreErrorCode, isTemporaryError, type Lease, type MailboxId, type MessageInfo, type Store, type Uid } from "@mailroom/store";

/**
 * Copying one store into another without changing a single UIDL, so that POP3 clients that leave mail
 * on the server do not download everything again after a move. The copy only ever adds to the
 * target and skips whatever is there already, which makes an interrupted run safe to simply repeat.
 */

export type CopyProgressEvent =
  | { readonly type: "domain"; readonly domain: string; readonly action: "copied" | "skipped" }
  | { readonly type: "account"; readonly address: string; readonly action: "copied" | "skipped" | "conflict" }
  | { readonly type: "alias"; readonly source: string; readonly target: string; readonly action: "copied" | "skipped" }
  | { readonly type: "mailbox-start"; readonly mailbox: MailboxId; readonly target: MailboxId; readonly messages: number }
  | {
      readonly type: "message";
      readonly mailbox: MailboxId;
      readonly uid: Uid;
      readonly size: number;
      readonly action: "copied" | "skipped" | "failed" | "pruned" | "retrieved";
    }
  | { readonly type: "mailbox-done"; readonly mailbox: MailboxId; readonly copied: number; readonly skipped: number };

export interface CopyOptions {
  /** Run {@link verifyCopy} after copying and attach its result to the report. */
  readonly verify?: boolean;
  /** Also compare message contents (SHA-256 of both sides) during verification. Reads every message twice. */
  readonly verifyContent?: boolean;
  /**
   * Delete messages from target mailboxes that are not in the source mailbox. Meant for the last pass
   * before switching servers, when a client deleted mail on the old server after an earlier pass:
   * without it that mail would show up again on the new one. Never use it once the target takes mail.
   */
  readonly prune?: boolean;
  /** Called for every domain, account, alias and message handled. Must not throw. */
  readonly onProgress?: (event: CopyProgressEvent) => void;
  /** Stops between messages (and inside the append in progress, which then leaves nothing behind). */
  readonly signal?: AbortSignal;
}

export interface CopyFailure {
  readonly mailbox: MailboxId;
  readonly uid: Uid;
  readonly error: string;
}

export interface CopyTotals {
  readonly copied: number;
  readonly skipped: number;
}

export interface CopyReport {
  readonly domains: CopyTotals;
  readonly accounts: CopyTotals;
  readonly aliases: CopyTotals;
  /** Mailboxes looked at (source side). */
  readonly mailboxes: number;
  readonly messages: CopyTotals & {
    readonly failed: number;
    readonly pruned: number;
    /**
     * Messages already on the target (skipped) that a client retrieved from the source since the earlier
     * pass: the target now has a first-retrieval time for them too, so EXPIRE retention starts there.
     */
    readonly retrieved: number;
  };
  /** Octets of the messages copied in this run. */
  readonly bytes: number;
  /**
   * Accounts that exist on both sides with different password hashes. They are left as they are on the
   * target (someone may have changed the password there on purpose).
   */
  readonly accountConflicts: readonly string[];
  /** Messages whose UID exists on both sides with a different size; left as they are on the target. */
  readonly sizeConflicts: readonly { readonly mailbox: MailboxId; readonly uid: Uid; readonly source: number; readonly target: number }[];
  /** Messages that failed permanently; temporary failures stop the copy instead (re-run it). */
  readonly failures: readonly CopyFailure[];
  readonly verify?: VerifyReport;
}

export interface MailboxDifference {
  readonly mailbox: MailboxId;
  /** The id the target uses for it (differs only if the target names account mailboxes differently). */
  readonly target: MailboxId;
  readonly sourceCount: number;
  readonly targetCount: number;
  /** In the source, not in the target. */
  readonly missing: readonly Uid[];
  /** In the target, not in the source. */
  readonly extra: readonly Uid[];
  readonly sizeMismatch: readonly { readonly uid: Uid; readonly source: number; readonly target: number }[];
  /**
   * Retrieved (by a POP3 client, for EXPIRE) on one side only. The times themselves are not compared:
   * stores may round them, and a re-run can only record the time of that run on the target.
   */
  readonly retrievalMismatch: readonly { readonly uid: Uid; readonly source: number | null; readonly target: number | null }[];
  /** Only with `content: true`: same UID and size, different octets. */
  readonly contentMismatch: readonly Uid[];
}

export interface VerifyReport {
  /** True when nothing below lists a difference. */
  readonly ok: boolean;
  readonly mailboxes: number;
  readonly messages: number;
  readonly missingDomains: readonly string[];
  readonly missingAccounts: readonly string[];
  readonly accountConflicts: readonly string[];
  readonly missingAliases: readonly { readonly source: string; readonly target: string }[];
  /** Only mailboxes with at least one difference. */
  readonly differences: readonly MailboxDifference[];
}

export interface VerifyOptions {
  /** Hash every message on both sides as well. */
  readonly content?: boolean;
  readonly signal?: AbortSignal;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Source mailbox id → target mailbox id. Stores choose account mailbox ids themselves, so the only
 * reliable link is the account address; other mailboxes keep their id.
 */
async function mailboxMapping(from: Store, to: Store): Promise<Map<MailboxId, MailboxId>> {
  const map = new Map<MailboxId, MailboxId>();
  for (const account of await from.directory.listAccounts()) {
    const there = await to.directory.getAccount(account.address);
    if (there) map.set(account.mailbox, there.mailbox);
  }
  return map;
}

/** Every source mailbox worth looking at: those with mail, and account mailboxes that may be empty. */
async function sourceMailboxes(from: Store): Promise<MailboxId[]> {
  const ids = new Set<MailboxId>(await from.listMailboxes());
  for (const account of await from.directory.listAccounts()) ids.add(account.mailbox);
  return [...ids];
}

/** Copies everything from `from` into `to`. Safe to re-run: whatever is there already is skipped. */
export async function copyStore(from: Store, to: Store, options: CopyOptions = {}): Promise<CopyReport> {
  const { signal } = options;
  const emit = options.onProgress ?? (() => {});
  signal?.throwIfAborted();

  const domains = { copied: 0, skipped: 0 };
  for (const domain of await from.directory.listDomains()) {
    signal?.throwIfAborted();
    let action: "copied" | "skipped" = "skipped";
    if (!(await to.directory.hasDomain(domain))) {
      try {
        await to.directory.addDomain(domain);
        action = "copied";
      } catch (error) {
        if (!hasStoreErrorCode(error, "exists")) throw error;
      }
    }
    domains[action]++;
    emit({ type: "domain", domain, action });
  }

  const accounts = { copied: 0, skipped: 0 };
  const accountConflicts: string[] = [];
  for (const account of await from.directory.listAccounts()) {
    signal?.throwIfAborted();
    let existing = await to.directory.getAccount(account.address);
    if (!existing) {
      try {
        // The hash moves as it is: nobody has to set a new password, and we never see the old one.
        existing = await to.directory.addAccount({ address: account.address, passwordHash: account.passwordHash });
        accounts.copied++;
        emit({ type: "account", address: account.address, action: "copied" });
        continue;
      } catch (error) {
        if (!hasStoreErrorCode(error, "exists")) throw error;
        existing = await to.directory.getAccount(account.address);
      }
    }
    accounts.skipped++;
    if (existing && existing.passwordHash !== account.passwordHash) {
      accountConflicts.push(account.address);
      emit({ type: "account", address: account.address, action: "conflict" });
    } else {
      emit({ type: "account", address: account.address, action: "skipped" });
    }
  }

  const aliases = { copied: 0, skipped: 0 };
  for (const alias of await from.directory.listAliases()) {
    signal?.throwIfAborted();
    let action: "copied" | "skipped" = "skipped";
    if (!(await to.directory.aliasTargets(alias.source)).includes(alias.target)) {
      try {
        await to.directory.addAlias(alias);
        action = "copied";
      } catch (error) {
        if (!hasStoreErrorCode(error, "exists")) throw error;
      }
    }
    aliases[action]++;
    emit({ type: "alias", source: alias.source, target: alias.target, action });
  }

  const mapping = await mailboxMapping(from, to);
  const ids = await sourceMailboxes(from);
  const messages = { copied: 0, skipped: 0, failed: 0, pruned: 0, retrieved: 0 };
  let bytes = 0;
  const sizeConflicts: CopyReport["sizeConflicts"][number][] = [];
  const failures: CopyFailure[] = [];

  for (const id of ids) {
    signal?.throwIfAborted();
    const targetId = mapping.get(id) ?? id;
    const source = from.mailbox(id);
    const target = to.mailbox(targetId);
    // The target must never generate a UID the source already gave out, also one of a message deleted
    // before the copy: a client that kept its list of seen UIDLs would take the new message for one it
    // has. Only stores of the same kind generate alike; each ignores the other kinds' marks.
    const mark = source.uidMark ? await source.uidMark() : null;
    if (mark !== null && target.skipUids) await target.skipUids(mark);
    const list = await source.list();
    const present = new Map<Uid, MessageInfo>((await target.list()).map((m) => [m.uid, m]));
    emit({ type: "mailbox-start", mailbox: id, target: targetId, messages: list.length });
    let copiedHere = 0;
    let skippedHere = 0;
    // Copied in an earlier pass, retrieved from the source since: a client that has its UIDL never asks
    // for it again, so without this its EXPIRE retention would never start on the target.
    const retrievedSince: MessageInfo[] = [];

    for (const message of list) {
      signal?.throwIfAborted();
      const there = present.get(message.uid);
      if (there) {
        if (there.size !== message.size) {
          sizeConflicts.push({ mailbox: id, uid: message.uid, source: message.size, target: there.size });
        }
        if (message.retrievedAt !== null && there.retrievedAt === null) retrievedSince.push(message);
        messages.skipped++;
        skippedHere++;
        emit({ type: "message", mailbox: id, uid: message.uid, size: message.size, action: "skipped" });
        continue;
      }
      try {
        const stream = await source.read(message.uid);
        const info = await target.append(stream, {
          uid: message.uid,
          receivedAt: message.receivedAt,
          retrievedAt: message.retrievedAt,
          ...(signal ? { signal } : {}),
        });
        if (info.size !== message.size) {
          sizeConflicts.push({ mailbox: id, uid: message.uid, source: message.size, target: info.size });
        }
        messages.copied++;
        copiedHere++;
        bytes += info.size;
        emit({ type: "message", mailbox: id, uid: message.uid, size: info.size, action: "copied" });
      } catch (error) {
        signal?.throwIfAborted();
        if (hasStoreErrorCode(error, "exists")) {
          // Someone (a parallel run, a delivery keeping UIDs) put it there since we listed: fine.
          messages.skipped++;
          skippedHere++;
          emit({ type: "message", mailbox: id, uid: message.uid, size: message.size, action: "skipped" });
          continue;
        }
        // A message deleted from the source since the listing is not a failure of the copy.
        if (hasStoreErrorCode(error, "not-found")) continue;
        if (isTemporaryError(error)) {
          throw new Error(`copy stopped at ${id} uid ${message.uid}: ${describe(error)} (re-run to resume)`, {
            cause: error,
          });
        }
        messages.failed++;
        failures.push({ mailbox: id, uid: message.uid, error: describe(error) });
        emit({ type: "message", mailbox: id, uid: message.uid, size: message.size, action: "failed" });
      }
    }

    const keep = new Set(list.map((m) => m.uid));
    const extra = options.prune ? [...present.keys()].filter((uid) => !keep.has(uid)) : [];
    let lease: Lease | null = null;
    if (retrievedSince.length > 0 || extra.length > 0) {
      signal?.throwIfAborted();
      // Both need the mailbox's lease; it is held only for these two calls.
      lease = await target
        .acquireLease({ holder: options.prune ? "mailroom store copy --prune" : "mailroom store copy", ttlMs: 60_000 })
        .catch((error: unknown) => {
          // A POP3 session on the target holds the mailbox: the retrieval times wait for the next run
          // (verify lists them meanwhile). A prune that cannot happen is an error, as before.
          if (extra.length === 0 && hasStoreErrorCode(error, "in-use")) return null;
          throw error;
        });
    }
    if (lease) {
      try {
        // The contract records "now": the closest a store can get to the source's time for a message
        // it already holds. Retention then starts at most one pass later than on the old server.
        if (retrievedSince.length > 0) await target.markRetrieved(retrievedSince.map((m) => m.uid), lease);
        if (extra.length > 0) messages.pruned += await target.expunge(extra, lease);
      } finally {
        await lease.release();
      }
      messages.retrieved += retrievedSince.length;
      for (const m of retrievedSince) emit({ type: "message", mailbox: id, uid: m.uid, size: m.size, action: "retrieved" });
      for (const uid of extra) {
        emit({ type: "message", mailbox: id, uid, size: present.get(uid)?.size ?? 0, action: "pruned" });
      }
    }
    emit({ type: "mailbox-done", mailbox: id, copied: copiedHere, skipped: skippedHere });
  }

  const report: CopyReport = {
    domains,
    accounts,
    aliases,
    mailboxes: ids.length,
    messages,
    bytes,
    accountConflicts,
    sizeConflicts,
    failures,
  };
  if (!options.verify) return report;
  const verify = await verifyCopy(from, to, {
    ...(options.verifyContent ? { content: true } : {}),
    ...(signal ? { signal } : {}),
  });
  return { ...report, verify };
}

async function digest(stream: AsyncIterable<Uint8Array>): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk);
  return hash.digest("hex");
}

/**
 * Compares what a client would see on both sides: per mailbox the UIDs, their sizes and whether they
 * were retrieved (and with `content`, the octets), plus the domains, accounts and aliases. Read-only
 * on both stores.
 */
export async function verifyCopy(from: Store, to: Store, options: VerifyOptions = {}): Promise<VerifyReport> {
  const { signal } = options;
  const targetDomains = new Set(await to.directory.listDomains());
  const missingDomains = (await from.directory.listDomains()).filter((d) => !targetDomains.has(d));

  const missingAccounts: string[] = [];
  const accountConflicts: string[] = [];
  for (const account of await from.directory.listAccounts()) {
    const there = await to.directory.getAccount(account.address);
    if (!there) missingAccounts.push(account.address);
    else if (there.passwordHash !== account.passwordHash) accountConflicts.push(account.address);
  }

  const targetAliases = new Set((await to.directory.listAliases()).map((a) => `${a.source}\u0000${a.target}`));
  const missingAliases = (await from.directory.listAliases())
    .filter((a) => !targetAliases.has(`${a.source}\u0000${a.target}`))
    .map((a) => ({ source: a.source, target: a.target }));

  const mapping = await mailboxMapping(from, to);
  const ids = await sourceMailboxes(from);
  const differences: MailboxDifference[] = [];
  let messageCount = 0;
  for (const id of ids) {
    signal?.throwIfAborted();
    const targetId = mapping.get(id) ?? id;
    const source = from.mailbox(id);
    const target = to.mailbox(targetId);
    const mine = await source.list();
    const theirs = await target.list();
    messageCount += mine.length;
    const theirsByUid = new Map(theirs.map((m) => [m.uid, m]));
    const mineUids = new Set(mine.map((m) => m.uid));
    const missing: Uid[] = [];
    const sizeMismatch: MailboxDifference["sizeMismatch"][number][] = [];
    const retrievalMismatch: MailboxDifference["retrievalMismatch"][number][] = [];
    const contentMismatch: Uid[] = [];
    for (const message of mine) {
      const there = theirsByUid.get(message.uid);
      if (there && (there.retrievedAt === null) !== (message.retrievedAt === null)) {
        retrievalMismatch.push({ uid: message.uid, source: message.retrievedAt, target: there.retrievedAt });
      }
      if (!there) missing.push(message.uid);
      else if (there.size !== message.size) sizeMismatch.push({ uid: message.uid, source: message.size, target: there.size });
      else if (options.content) {
        signal?.throwIfAborted();
        const [a, b] = await Promise.all([
          source.read(message.uid).then(digest),
          target.read(message.uid).then(digest),
        ]);
        if (a !== b) contentMismatch.push(message.uid);
      }
    }
    const extra = theirs.filter((m) => !mineUids.has(m.uid)).map((m) => m.uid);
    if (missing.length + extra.length + sizeMismatch.length + retrievalMismatch.length + contentMismatch.length > 0) {
      differences.push({
        mailbox: id,
        target: targetId,
        sourceCount: mine.length,
        targetCount: theirs.length,
        missing,
        extra,
        sizeMismatch,
        retrievalMismatch,
        contentMismatch,
      });
    }
  }

  const ok =
    differences.length === 0 &&
    missingDomains.length === 0 &&
    missingAccounts.length === 0 &&
    accountConflicts.length === 0 &&
    missingAliases.length === 0;
  return {
    ok,
    mailboxes: ids.length,
    messages: messageCount,
    missingDomains,
    missingAccounts,
    accountConflicts,
    missingAliases,
    differences,
  };
}
