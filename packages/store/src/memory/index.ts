/**
 * The reference in-memory store: the simplest complete implementation of the contract, meant to be
 * read by adapter authors and used in tests and embedded programs that need no persistence.
 * Instances created with the same `namespace` share their data, the way two server processes share a
 * database; that is how the conformance suite tests restarts and lease races against it.
 */
import { randomUUID } from "node:crypto";
import type {
  Account,
  Alias,
  AppendOptions,
  Delivered,
  DeliverOptions,
  Directory,
  Lease,
  LeaseOptions,
  Mailbox,
  MailboxId,
  MessageInfo,
  ReadOptions,
  Store,
  StoreAdapter,
  Uid,
} from "../contract.js";
import { StoreError } from "../errors.js";
import { assertMailboxId, assertUid, domainOf, normalizeAddress, normalizeAliasSource, normalizeDomain } from "../names.js";
import type { Queue } from "../queue.js";
import { fromBytes, guardAppendSource, readAll, takeTop } from "../streams.js";
import { MemoryQueue, newQueueState, type QueueState } from "./queue.js";

interface StoredMessage {
  info: MessageInfo;
  data: Uint8Array;
}

interface LeaseState {
  token: string;
  holder: string;
  expiresAt: number;
}

interface MailboxState {
  messages: Map<Uid, StoredMessage>;
  /** Every UID this mailbox ever held, so a generated one is never a reused one. */
  everUsed: Set<Uid>;
  next: number;
  lease: LeaseState | null;
}

interface State {
  domains: Set<string>;
  accounts: Map<string, Account>;
  aliases: Alias[];
  mailboxes: Map<MailboxId, MailboxState>;
  queue: QueueState;
}

const namespaces = new Map<string, State>();

function newState(): State {
  return { domains: new Set(), accounts: new Map(), aliases: [], mailboxes: new Map(), queue: newQueueState() };
}

export interface MemoryStoreOptions {
  /** Instances with the same namespace share one set of data. Default: a fresh private namespace. */
  readonly namespace?: string;
}

function mailboxState(state: State, id: MailboxId): MailboxState {
  let box = state.mailboxes.get(id);
  if (!box) {
    box = { messages: new Map(), everUsed: new Set(), next: 1, lease: null };
    state.mailboxes.set(id, box);
  }
  return box;
}

function liveLease(box: MailboxState, now = Date.now()): LeaseState | null {
  return box.lease && box.lease.expiresAt > now ? box.lease : null;
}

function checkLease(box: MailboxState, lease: Lease): void {
  const held = liveLease(box);
  if (!held || held.token !== lease.token) {
    throw new StoreError("lease-lost", `memory: lease on ${lease.mailbox} is no longer held`);
  }
}

function addMessage(box: MailboxState, data: Uint8Array, options: AppendOptions): MessageInfo {
  let uid = options.uid;
  if (uid !== undefined) {
    assertUid(uid);
    if (box.messages.has(uid)) throw new StoreError("exists", `memory: uid ${uid} already in mailbox`);
  } else {
    do uid = `m${(box.next++).toString(36)}`;
    while (box.everUsed.has(uid));
  }
  const info: MessageInfo = {
    uid,
    size: data.length,
    receivedAt: options.receivedAt ?? Date.now(),
    retrievedAt: options.retrievedAt ?? null,
  };
  box.messages.set(uid, { info, data });
  box.everUsed.add(uid);
  return info;
}

class MemoryMailbox implements Mailbox {
  constructor(
    private readonly state: State,
    readonly id: MailboxId,
  ) {}

  private get box(): MailboxState {
    return mailboxState(this.state, this.id);
  }

  async append(source: AsyncIterable<Uint8Array>, options: AppendOptions = {}): Promise<MessageInfo> {
    if (options.uid !== undefined) assertUid(options.uid);
    const data = await readAll(guardAppendSource(source, options));
    return addMessage(this.box, data, options);
  }

  async list(): Promise<readonly MessageInfo[]> {
    return [...this.box.messages.values()].map((m) => m.info);
  }

  async read(uid: Uid, options: ReadOptions = {}): Promise<AsyncIterable<Uint8Array>> {
    const message = this.box.messages.get(uid);
    if (!message) throw new StoreError("not-found", `memory: no message ${uid} in ${this.id}`);
    const whole = fromBytes(message.data);
    return options.bodyLines === undefined ? whole : takeTop(whole, options.bodyLines);
  }

  async expunge(uids: readonly Uid[], lease: Lease): Promise<number> {
    const box = this.box;
    checkLease(box, lease);
    let removed = 0;
    for (const uid of uids) if (box.messages.delete(uid)) removed++;
    return removed;
  }

  async markRetrieved(uids: readonly Uid[], lease: Lease): Promise<void> {
    const box = this.box;
    checkLease(box, lease);
    const now = Date.now();
    for (const uid of uids) {
      const message = box.messages.get(uid);
      if (message && message.info.retrievedAt === null) message.info = { ...message.info, retrievedAt: now };
    }
  }

  async acquireLease(options: LeaseOptions): Promise<Lease> {
    const box = this.box;
    const held = liveLease(box);
    if (held) throw new StoreError("in-use", `memory: ${this.id} is in use by ${held.holder}`);
    const mine: LeaseState = { token: randomUUID(), holder: options.holder, expiresAt: Date.now() + options.ttlMs };
    box.lease = mine;
    const id = this.id;
    return {
      mailbox: id,
      token: mine.token,
      holder: mine.holder,
      get expiresAt() {
        return mine.expiresAt;
      },
      async renew() {
        if (liveLease(box)?.token !== mine.token) throw new StoreError("lease-lost", `memory: lease on ${id} lost`);
        mine.expiresAt = Date.now() + options.ttlMs;
      },
      async release() {
        if (box.lease?.token === mine.token) box.lease = null;
      },
    };
  }

  async uidMark(): Promise<string | null> {
    const box = this.box;
    return box.next > 1 ? `memory:${box.next - 1}` : null;
  }

  async skipUids(mark: string): Promise<void> {
    const last = /^memory:(\d{1,15})$/.exec(mark);
    if (!last) return;
    const box = this.box;
    box.next = Math.max(box.next, Number(last[1]) + 1);
  }
}

class MemoryDirectory implements Directory {
  constructor(private readonly state: State) {}

  async addDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    if (this.state.domains.has(d)) throw new StoreError("exists", `memory: domain ${d} exists`);
    this.state.domains.add(d);
  }

  async removeDomain(domain: string): Promise<void> {
    const d = normalizeDomain(domain);
    if (!this.state.domains.has(d)) throw new StoreError("not-found", `memory: no domain ${d}`);
    const used =
      [...this.state.accounts.keys()].some((a) => domainOf(a) === d) ||
      this.state.aliases.some((a) => domainOf(a.source) === d);
    if (used) throw new StoreError("exists", `memory: domain ${d} still has accounts or aliases`);
    this.state.domains.delete(d);
  }

  async hasDomain(domain: string): Promise<boolean> {
    return this.state.domains.has(normalizeDomain(domain));
  }

  async listDomains(): Promise<readonly string[]> {
    return [...this.state.domains].sort();
  }

  async addAccount(input: { address: string; passwordHash: string }): Promise<Account> {
    const address = normalizeAddress(input.address);
    if (!this.state.domains.has(domainOf(address))) {
      throw new StoreError("not-found", `memory: domain of ${address} is not local`);
    }
    if (this.state.accounts.has(address)) throw new StoreError("exists", `memory: account ${address} exists`);
    const account: Account = { address, mailbox: address, passwordHash: input.passwordHash };
    this.state.accounts.set(address, account);
    return account;
  }

  async getAccount(address: string): Promise<Account | null> {
    return this.state.accounts.get(normalizeAddress(address)) ?? null;
  }

  async setPasswordHash(address: string, passwordHash: string): Promise<void> {
    const a = normalizeAddress(address);
    const account = this.state.accounts.get(a);
    if (!account) throw new StoreError("not-found", `memory: no account ${a}`);
    this.state.accounts.set(a, { ...account, passwordHash });
  }

  async removeAccount(address: string): Promise<void> {
    const a = normalizeAddress(address);
    if (!this.state.accounts.delete(a)) throw new StoreError("not-found", `memory: no account ${a}`);
  }

  async listAccounts(domain?: string): Promise<readonly Account[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    return [...this.state.accounts.values()]
      .filter((a) => d === undefined || domainOf(a.address) === d)
      .sort((x, y) => (x.address < y.address ? -1 : 1));
  }

  async addAlias(alias: Alias): Promise<void> {
    const source = normalizeAliasSource(alias.source);
    const target = normalizeAddress(alias.target);
    if (!this.state.domains.has(domainOf(source))) {
      throw new StoreError("not-found", `memory: domain of ${source} is not local`);
    }
    if (this.state.aliases.some((a) => a.source === source && a.target === target)) {
      throw new StoreError("exists", `memory: alias ${source} -> ${target} exists`);
    }
    this.state.aliases.push({ source, target });
  }

  async removeAlias(source: string, target?: string): Promise<void> {
    const s = normalizeAliasSource(source);
    const t = target === undefined ? undefined : normalizeAddress(target);
    const before = this.state.aliases.length;
    this.state.aliases = this.state.aliases.filter((a) => !(a.source === s && (t === undefined || a.target === t)));
    if (this.state.aliases.length === before) throw new StoreError("not-found", `memory: no alias ${s}`);
  }

  async aliasTargets(source: string): Promise<readonly string[]> {
    const s = normalizeAliasSource(source);
    return this.state.aliases.filter((a) => a.source === s).map((a) => a.target);
  }

  async listAliases(domain?: string): Promise<readonly Alias[]> {
    const d = domain === undefined ? undefined : normalizeDomain(domain);
    return this.state.aliases.filter((a) => d === undefined || domainOf(a.source) === d);
  }
}

class MemoryStore implements Store {
  readonly kind = "memory";
  readonly capabilities = { sharedAcrossProcesses: false, boundedMemory: false };
  readonly directory: Directory;
  readonly queue: Queue;
  private closed = false;

  constructor(private readonly state: State) {
    this.directory = new MemoryDirectory(state);
    this.queue = new MemoryQueue(state.queue);
  }

  mailbox(id: MailboxId): Mailbox {
    assertMailboxId(id);
    return new MemoryMailbox(this.state, id);
  }

  async deliver(
    mailboxes: readonly MailboxId[],
    source: AsyncIterable<Uint8Array>,
    options: DeliverOptions = {},
  ): Promise<readonly Delivered[]> {
    for (const id of mailboxes) assertMailboxId(id);
    const data = await readAll(guardAppendSource(source, options));
    // Everything below is synchronous, so the copies appear together: all or none.
    const append: AppendOptions = options.receivedAt === undefined ? {} : { receivedAt: options.receivedAt };
    return mailboxes.map((id) => ({ mailbox: id, message: addMessage(mailboxState(this.state, id), data, append) }));
  }

  async listMailboxes(): Promise<readonly MailboxId[]> {
    // Handles create state on first touch (a list, a lease); only mailboxes that got mail count.
    return [...this.state.mailboxes].filter(([, box]) => box.everUsed.size > 0).map(([id]) => id);
  }

  async ping(): Promise<void> {
    if (this.closed) throw new StoreError("unavailable", "memory: store is closed");
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Creates an in-memory store. See {@link MemoryStoreOptions.namespace} for sharing data. */
export function createMemoryStore(options: MemoryStoreOptions = {}): Store {
  let state: State;
  if (options.namespace === undefined) {
    state = newState();
  } else {
    state = namespaces.get(options.namespace) ?? newState();
    namespaces.set(options.namespace, state);
  }
  return new MemoryStore(state);
}

/** `memory:NAME` URLs: instances opened with the same NAME share data within one process. */
export const memoryAdapter: StoreAdapter = {
  name: "memory",
  schemes: ["memory"],
  async open(url: string): Promise<Store> {
    const name = url.slice(url.indexOf(":") + 1);
    return createMemoryStore(name ? { namespace: name } : {});
  },
};

export default memoryAdapter;
