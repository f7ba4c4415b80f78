import type { Queue } from "./queue.js";

/**
 * The store contract: what the protocol packages need from storage, and nothing more.
 * README.md in this package is the prose version; the conformance suite (`@mailroom/store/conformance`)
 * is the executable one. An adapter is correct when it passes that suite unchanged.
 */

/**
 * A message's unique id within its mailbox, used as the POP3 UIDL: 1–70 printable ASCII characters
 * (0x21–0x7E). Stable forever, never reused for another message of the same mailbox, also after the
 * message was deleted and the store restarted.
 */
export type Uid = string;

/**
 * Names a mailbox. For accounts it is the normalised address (`alice@example.test`); stores must accept
 * any string that passes {@link assertMailboxId} and must never let it escape their own name space.
 */
export type MailboxId = string;

/** One message in a listing. */
export interface MessageInfo {
  readonly uid: Uid;
  /** Exactly the number of octets that `read(uid)` yields. */
  readonly size: number;
  /** When the message arrived, in milliseconds since the epoch. */
  readonly receivedAt: number;
  /**
   * When a client first retrieved the message (POP3 RETR committed at QUIT), or null if never.
   * Drives the EXPIRE retention policy. Stores may round it, never invent it.
   */
  readonly retrievedAt: number | null;
}

export interface AppendOptions {
  /**
   * Keep this UID instead of generating one (migration between stores, import from Dovecot). Fails with
   * "exists" if a message with that UID is in the mailbox, and "invalid-name" if it is not a valid UID.
   */
  readonly uid?: Uid;
  /** Arrival time to record; defaults to now. */
  readonly receivedAt?: number;
  /** Keep a known retrieval time (migration). */
  readonly retrievedAt?: number | null;
  /** Refuse with "too-big" once more than this many octets arrived; nothing is kept. */
  readonly maxBytes?: number;
  /** Aborting stops the append; nothing is kept. */
  readonly signal?: AbortSignal;
}

export interface DeliverOptions {
  readonly maxBytes?: number;
  /**
   * Aborting stops the delivery; nothing is kept. The signal is only the store's while `deliver` runs:
   * a caller may hand the same signal to its next delivery (the SMTP session keeps one per client
   * until it aborts), so remove any listener you add before settling and never act on it afterwards.
   */
  readonly signal?: AbortSignal;
  readonly receivedAt?: number;
  /**
   * The message was already acknowledged by this server (a bounce the delivery worker generates, queued
   * mail it hands to a local mailbox): a store must not refuse it for a soft limit of its own, such as
   * store-fs's free-space reserve. Only a hard failure (the disk itself full, the backend down) may
   * stop it. Stores without such limits ignore it.
   */
  readonly accepted?: boolean;
}

/** One copy made by {@link Store.deliver}. */
export interface Delivered {
  readonly mailbox: MailboxId;
  readonly message: MessageInfo;
}

export interface ReadOptions {
  /**
   * Only the header section, the empty line that ends it, and this many lines of the body (POP3 TOP).
   * A message without an empty line is all header and comes back whole.
   */
  readonly bodyLines?: number;
}

export interface LeaseOptions {
  /** Who holds it, for diagnostics only ("pop3 10.0.0.7:51234 on host-a"). */
  readonly holder: string;
  /** How long the lease lives without a renew. A crashed holder blocks the mailbox at most this long. */
  readonly ttlMs: number;
}

/**
 * Exclusive right to change a mailbox for a while. Two holders never overlap, also across processes
 * that share one store. A lease that is not renewed expires and may then be taken by someone else;
 * the old holder's `renew`, `expunge` and `markRetrieved` then fail with "lease-lost". A store may also
 * let a lease go before its expiry when the process holding it has certainly ended (the bundled stores
 * do, judged by `processHasEnded` on the same machine), so a crashed server does not block its users.
 */
export interface Lease {
  readonly mailbox: MailboxId;
  /** Fencing token: unique per acquisition. */
  readonly token: string;
  readonly holder: string;
  /** Current expiry in milliseconds since the epoch (moves on renew). */
  readonly expiresAt: number;
  /** Extends the lease by its ttl. Throws "lease-lost" if it already expired and was taken over. */
  renew(): Promise<void>;
  /** Gives the lease up. Idempotent; never throws for a lease that is already gone. */
  release(): Promise<void>;
}

export interface Mailbox {
  readonly id: MailboxId;

  /**
   * Stores one message read from `source`, which it consumes once, with backpressure. Resolves only when
   * the message is durable (fsynced, committed) and visible to `list`. On any failure, abort or
   * "too-big", nothing of the message stays visible. The octets are kept exactly as given.
   */
  append(source: AsyncIterable<Uint8Array>, options?: AppendOptions): Promise<MessageInfo>;

  /** A snapshot of the messages present now, in arrival order. Never includes a partial append. */
  list(): Promise<readonly MessageInfo[]>;

  /**
   * Opens one message as a stream of exactly `size` octets (or the TOP subset). Throws "not-found" if the
   * UID is not in the mailbox. The stream must not hold the whole message in memory.
   */
  read(uid: Uid, options?: ReadOptions): Promise<AsyncIterable<Uint8Array>>;

  /**
   * Deletes these messages, all or none. UIDs that are already gone are ignored (the goal is reached).
   * Resolves once the deletion is durable, with the number of messages removed. Requires a live lease.
   */
  expunge(uids: readonly Uid[], lease: Lease): Promise<number>;

  /** Records a first retrieval time (now) for messages that have none. Missing UIDs are ignored. */
  markRetrieved(uids: readonly Uid[], lease: Lease): Promise<void>;

  /** Takes the mailbox's exclusive lease, or throws "in-use" while another live lease exists. */
  acquireLease(options: LeaseOptions): Promise<Lease>;

  /**
   * Optional, for stores that generate UIDs in a sequence (a counter per mailbox): how far the sequence
   * has got, deleted messages included, as a mark in the store's own format; null when it never
   * generated one. A copy between two stores of the same kind hands it to `skipUids` on the target, so
   * that the target never gives a new message the UID of a message deleted before the copy (which a
   * client that kept its UIDL list would take for mail it already has). Stores whose UIDs are unique
   * by construction (store-fs) leave both methods out.
   */
  uidMark?(): Promise<string | null>;

  /**
   * Optional, the other half of `uidMark`: from now on the mailbox generates no UID that `mark` covers.
   * A mark the store does not recognise (another kind of store's: its UIDs cannot collide with ours) is
   * ignored; a mark behind the mailbox's own sequence changes nothing. Idempotent.
   */
  skipUids?(mark: string): Promise<void>;
}

/** A login account. Its mailbox receives mail for its address and for aliases that point at it. */
export interface Account {
  /** Normalised address, also the login name. */
  readonly address: string;
  readonly mailbox: MailboxId;
  /** A password hash made by `hashPassword` (PHC string). Never a plaintext password. */
  readonly passwordHash: string;
}

/** `source` (an address, or `@domain` for a catch-all) forwards to `target` (an address). */
export interface Alias {
  readonly source: string;
  readonly target: string;
}

/**
 * Domains, accounts and aliases. Every address and domain that goes in is normalised first with the
 * helpers in this package; stores compare them as plain strings.
 */
export interface Directory {
  addDomain(domain: string): Promise<void>;
  /** Fails with "exists" while accounts or aliases of the domain remain, "not-found" if unknown. */
  removeDomain(domain: string): Promise<void>;
  hasDomain(domain: string): Promise<boolean>;
  listDomains(): Promise<readonly string[]>;

  /** Fails with "not-found" if the domain is not local and "exists" if the address is taken. */
  addAccount(account: { readonly address: string; readonly passwordHash: string }): Promise<Account>;
  getAccount(address: string): Promise<Account | null>;
  setPasswordHash(address: string, passwordHash: string): Promise<void>;
  /** Removes the login. The mailbox's messages are kept (as Dovecot and Postfix do). */
  removeAccount(address: string): Promise<void>;
  listAccounts(domain?: string): Promise<readonly Account[]>;

  /** Fails with "not-found" if the source's domain is not local, "exists" for a duplicate pair. */
  addAlias(alias: Alias): Promise<void>;
  /** Removes one pair, or every pair of `source` when `target` is left out. "not-found" if none. */
  removeAlias(source: string, target?: string): Promise<void>;
  /** The targets of one source (exact match, no expansion); empty when none. */
  aliasTargets(source: string): Promise<readonly string[]>;
  listAliases(domain?: string): Promise<readonly Alias[]>;

  /**
   * Optional. Everything `resolveRecipient` may ask about `address` (its domain, the account, the
   * aliases and catch-alls it leads through, their domains), fetched at once: for a database one round
   * trip per recipient instead of four or more. The answers must be the directory's own; a question
   * outside what was fetched must be passed on to the directory. A store without it is asked one
   * lookup at a time.
   */
  recipientLookups?(address: string): Promise<RecipientLookups>;
}

/** The directory lookups that resolving a recipient needs (see `Directory.recipientLookups`). */
export type RecipientLookups = Pick<Directory, "hasDomain" | "getAccount" | "aliasTargets">;

/** What a store can do beyond the contract. Capabilities may only add guarantees. */
export interface StoreCapabilities {
  /** Several server processes (maybe on several hosts) may open the same store at once. */
  readonly sharedAcrossProcesses: boolean;
  /**
   * Appending and reading a message keeps only a bounded window of it in memory, whatever its size.
   * Every real adapter must say true; only the in-memory reference store says false.
   */
  readonly boundedMemory: boolean;
}

export interface Store {
  /** "maildir", "postgres", "redis", "memory", or a third party's name. */
  readonly kind: string;
  readonly capabilities: StoreCapabilities;
  readonly directory: Directory;
  /**
   * Mail waiting for delivery to other domains: durable, streamed, claimed per item (see queue.ts and
   * the "Queue" section of the README). Every store has one.
   */
  readonly queue: Queue;

  /** A handle on one mailbox; no I/O. Throws "invalid-name" for an id it cannot hold safely. */
  mailbox(id: MailboxId): Mailbox;

  /**
   * Stores one message in several mailboxes (one SMTP transaction, many recipients), all or none.
   * `source` is consumed once. Resolves when every copy is durable.
   */
  deliver(
    mailboxes: readonly MailboxId[],
    source: AsyncIterable<Uint8Array>,
    options?: DeliverOptions,
  ): Promise<readonly Delivered[]>;

  /** Every mailbox that holds or held messages (for migrations and retention jobs). */
  listMailboxes(): Promise<readonly MailboxId[]>;

  /** Resolves if the backend answers now; throws "unavailable" otherwise. */
  ping(): Promise<void>;

  /** Releases connections and handles. Idempotent. */
  close(): Promise<void>;

  /**
   * Optional: whether new mail of `octets` (0 when the size is not known yet) would be taken now, for
   * a store with a soft limit of its own (store-fs's free-space reserve). The SMTP server asks at MAIL
   * FROM with the client's SIZE= and answers 452 4.3.1 for false, before any data is sent. A cheap
   * check from numbers the store keeps anyway (it may refresh them when they are stale), with no side
   * effect: nothing is set aside, and `deliver` may still refuse the message. False is the answer
   * "no room"; it never throws for that (a caller treats an error as room). Stores without such a
   * limit leave it out.
   */
  hasRoomFor?(octets: number): boolean | Promise<boolean>;
}

/** Options from the server's `[store]` config section, other than `url`. Keys are adapter-specific. */
export type StoreOptions = Readonly<Record<string, unknown>>;

/**
 * How an adapter plugs into the server: by URL scheme. A package whose default export is a
 * StoreAdapter can be named in the config and is picked for URLs of its schemes.
 */
export interface StoreAdapter {
  readonly name: string;
  /** URL schemes without the colon, e.g. ["postgres", "postgresql"]. */
  readonly schemes: readonly string[];
  /** Option keys the adapter understands; the server rejects any other key in `[store]`. */
  readonly optionKeys?: readonly string[];
  open(url: string, options?: StoreOptions): Promise<Store>;
}
