import { randomBytes } from "node:crypto";
import {
  fromBytes,
  isStoreError,
  isTemporaryError,
  resolveRecipient,
  silentLogger,
  type Logger,
  type Queue,
  type QueueClaim,
  type QueueItem,
  type QueueRecipient,
  type Store,
} from "@mailroom/store";
import { ConnectionError, formatReply, SmtpReplyError, SmtpSession } from "./client.js";
import { MailRouter, type MailHost } from "./dns.js";
import { buildDsn, isGlobalDsn, readHeaders } from "./dsn.js";
import { withoutReturnPath, withReturnPath } from "./message.js";
import { formatAge, queueStats } from "./admin.js";
import { TlsHandshakeError, type TlsClientOptions } from "./socket.js";

export interface SmarthostOptions {
  readonly host: string;
  readonly port: number;
  readonly tls: "starttls" | "implicit" | "none";
  readonly auth?: { readonly username: string; readonly password: string };
  /** Refuse to send over an unencrypted connection. Default true when `auth` is set. */
  readonly requireTls?: boolean;
  /**
   * Check the smarthost's certificate: a chain to a trusted root (`tlsOptions.ca` adds roots) for the
   * smarthost's name. Default false, as Postfix's default TLS level for a relayhost; turn it on where
   * the smarthost has a proper certificate, so that no one in between gets the password.
   */
  readonly verify?: boolean;
}

export interface OutboundOptions {
  /** Uses `store.queue`. */
  readonly store: Store;
  /** Our EHLO name, Reporting-MTA and MAILER-DAEMON@ domain. */
  readonly hostname: string;
  readonly logger?: Logger;
  /** DNS servers, "127.0.0.1:5353" style; default the system's. */
  readonly resolver?: { readonly servers: readonly string[]; readonly timeoutMs?: number };
  /** Send everything to this host instead of looking up MX records. */
  readonly smarthost?: SmarthostOptions;
  /** Port of MX hosts. Default 25; only tests and unusual networks change it. */
  readonly mxPort?: number;
  /**
   * Milliseconds to wait after the first, second, ... failed attempt (the last step repeats until
   * `queueLifetimeMs`).
   */
  readonly retrySchedule?: readonly number[];
  /**
   * How long a message may stay queued: a recipient still pending at an attempt made once the
   * message has been queued that long fails (Postfix's maximal_queue_lifetime). Attempts an operator
   * forces do not shorten it, and the retry schedule does not set it. Default 5 days.
   */
  readonly queueLifetimeMs?: number;
  /** Items delivered in parallel. Default 8. */
  readonly concurrency?: number;
  /** Connections to one destination domain at once. Default 2. */
  readonly perDomainConcurrency?: number;
  /** How often `start()` looks for due items. Default 1 s. */
  readonly pollIntervalMs?: number;
  /** Claim lease; renewed while a delivery runs. Default 5 minutes. */
  readonly claimTtlMs?: number;
  /** For a connection to open. Default 60 s (Postfix waits 30 s). */
  readonly connectTimeoutMs?: number;
  /**
   * Addresses (of all MX hosts together, in order) tried per domain and attempt; the rest wait for the
   * next attempt. Default 5, as Postfix's smtp_mx_address_limit: a domain whose MX hosts resolve to
   * many unreachable addresses would otherwise hold a delivery slot for hours.
   */
  readonly mxAddressLimit?: number;
  /**
   * For each whole reply (from the command to its last line) before the end of data (the greeting,
   * EHLO, MAIL, RCPT, DATA), a TLS handshake and a stalled write. Default 5 minutes, RFC 5321
   * 4.5.3.2's minimum for the greeting, MAIL and RCPT (and above its 2 minutes for DATA and 3 for a
   * data block): a server that delays its greeting on purpose, or checks a recipient slowly, is still
   * waited for.
   */
  readonly replyTimeoutMs?: number;
  /**
   * Waiting for the server's answer after the data, while it stores the message. Default 10 minutes
   * (RFC 5321 4.5.3.2.6): giving up earlier risks a duplicate when the server did accept it.
   */
  readonly dataTimeoutMs?: number;
  /** TLS towards MX hosts and the smarthost. Opportunistic STARTTLS does not verify by default. */
  readonly tlsOptions?: TlsClientOptions;
  /** An idle connection is kept this long for the next item to the same host. Default 5 s; 0 closes at once. */
  readonly connectionIdleMs?: number;
  /** How often `start()` logs the queue size and the oldest item's age. Default 60 s. */
  readonly statsIntervalMs?: number;
}

export interface Outbound {
  start(): void;
  /** Stops claiming; running deliveries may finish until the deadline (default 30 s), then are cut off. */
  stop(options?: { readonly deadlineMs?: number }): Promise<void>;
  /** Claims and delivers what is due now; resolves with the number of items handled. */
  runOnce(): Promise<number>;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** Postfix's maximal_queue_lifetime: how long a message may wait, whatever the retry schedule. */
const DEFAULT_QUEUE_LIFETIME_MS = 5 * 24 * HOUR;

/** 5m, 10m, 20m, 40m, 1h, 2h, 4h, 8h, then every 8h until five days have passed in all. */
export function defaultRetrySchedule(): number[] {
  const schedule = [5, 10, 20, 40].map((m) => m * MINUTE).concat([1, 2, 4, 8].map((h) => h * HOUR));
  const limit = 5 * 24 * HOUR;
  let total = schedule.reduce((a, b) => a + b, 0);
  while (total + 8 * HOUR <= limit) {
    schedule.push(8 * HOUR);
    total += 8 * HOUR;
  }
  if (limit > total) schedule.push(limit - total);
  return schedule;
}

class Semaphore {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = size;
  }
  get free(): number {
    return this.#free;
  }
  async acquire(): Promise<() => void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    };
  }
}

interface Outcome {
  readonly status: "delivered" | "failed" | "pending";
  readonly diagnostic: string;
}

/** Servers limit transactions per connection (ours at 100); start afresh well before that. */
const MAX_TRANSACTIONS_PER_CONNECTION = 50;

/** Idle connections per destination ("address:port"), reused by the next item going there. */
class SessionPool {
  #idle = new Map<string, { session: SmtpSession; timer: ReturnType<typeof setTimeout> }[]>();

  readonly idleMs: number;

  constructor(idleMs: number) {
    this.idleMs = idleMs;
  }

  take(key: string): SmtpSession | null {
    const list = this.#idle.get(key);
    const entry = list?.pop();
    if (list && list.length === 0) this.#idle.delete(key);
    if (!entry) return null;
    clearTimeout(entry.timer);
    return entry.session;
  }

  async give(key: string, session: SmtpSession): Promise<void> {
    if (this.idleMs <= 0 || !session.usable || session.transactions >= MAX_TRANSACTIONS_PER_CONNECTION) {
      await session.quit();
      return;
    }
    const list = this.#idle.get(key) ?? [];
    const entry = {
      session,
      timer: setTimeout(() => {
        const current = this.#idle.get(key);
        const index = current?.indexOf(entry) ?? -1;
        if (current && index >= 0) current.splice(index, 1);
        if (current?.length === 0) this.#idle.delete(key);
        void session.quit();
      }, this.idleMs),
    };
    list.push(entry);
    this.#idle.set(key, list);
  }

  /** QUIT to every idle connection, waiting for the answers at most `timeoutMs`. */
  async closeAll(timeoutMs: number): Promise<void> {
    const all = [...this.#idle.values()].flat();
    this.#idle.clear();
    await Promise.all(
      all.map((entry) => {
        clearTimeout(entry.timer);
        return entry.session.quit(timeoutMs);
      }),
    );
  }
}

export function createOutbound(options: OutboundOptions): Outbound {
  const queue = options.store.queue;
  if (!queue) throw new Error(`the ${options.store.kind} store has no outbound queue`);
  const log = (options.logger ?? silentLogger).child({ component: "outbound" });
  const router = new MailRouter({
    ...(options.resolver ? { servers: options.resolver.servers } : {}),
    ...(options.resolver?.timeoutMs !== undefined ? { timeoutMs: options.resolver.timeoutMs } : {}),
  });
  const schedule = options.retrySchedule ?? defaultRetrySchedule();
  const concurrency = Math.max(1, options.concurrency ?? 8);
  const perDomain = Math.max(1, options.perDomainConcurrency ?? 2);
  const claimTtlMs = options.claimTtlMs ?? 5 * MINUTE;
  const timeoutMs = options.connectTimeoutMs ?? MINUTE;
  const replyTimeoutMs = options.replyTimeoutMs ?? 5 * MINUTE;
  const addressLimit = Math.max(1, options.mxAddressLimit ?? 5);
  const lifetimeMs = options.queueLifetimeMs ?? DEFAULT_QUEUE_LIFETIME_MS;
  const holder = `outbound ${options.hostname} ${randomBytes(4).toString("hex")}`;

  const slots = new Semaphore(concurrency);
  const domainSlots = new Map<string, Semaphore>();
  const running = new Set<Promise<void>>();
  const sessions = new Set<SmtpSession>();
  const pool = new SessionPool(options.connectionIdleMs ?? 5_000);
  let started = false;
  let stopping = false;
  let pollTimer: ReturnType<typeof setTimeout> | null = null;
  let statsTimer: ReturnType<typeof setInterval> | null = null;

  const domainSlot = (key: string): Semaphore => {
    let slot = domainSlots.get(key);
    if (!slot) domainSlots.set(key, (slot = new Semaphore(perDomain)));
    return slot;
  };

  async function destinations(domain: string): Promise<{ hosts: readonly MailHost[]; port: number } | Outcome> {
    if (options.smarthost) {
      return { hosts: [{ name: options.smarthost.host, addresses: [options.smarthost.host] }], port: options.smarthost.port };
    }
    const route = await router.route(domain);
    if (route.kind === "failed") return { status: route.permanent ? "failed" : "pending", diagnostic: `${route.status} ${route.message}` };
    return { hosts: route.hosts, port: options.mxPort ?? 25 };
  }

  async function needsEightBit(item: QueueItem): Promise<boolean> {
    const declared = item.meta["body"]?.toUpperCase();
    if (declared === "8BITMIME") return true;
    if (declared === "7BIT") return false;
    for await (const chunk of await queue!.readMessage(item.id)) {
      if (chunk.some((byte) => byte >= 0x80)) return true;
    }
    return false;
  }

  /**
   * Whether this transaction really needs SMTPUTF8 (RFC 6531 3.4): a non-ASCII address in it, or
   * 8-bit octets in the header section. A client may ask for SMTPUTF8 and send plain ASCII; such a
   * message goes to a server without the extension as it is, as Postfix sends it.
   */
  async function needsUtf8(item: QueueItem, recipients: readonly string[]): Promise<boolean> {
    if (!isAscii(item.sender) || !recipients.every(isAscii)) return true;
    // The header section ends at the first empty line.
    let lineEmpty = true;
    for await (const chunk of await queue!.readMessage(item.id)) {
      for (const byte of chunk) {
        if (byte >= 0x80) return true;
        if (byte === 0x0a) {
          if (lineEmpty) return false;
          lineEmpty = true;
        } else if (byte !== 0x0d) lineEmpty = false;
      }
    }
    return false;
  }

  /** One domain's recipients of one item: tries its hosts in order until one gives an answer. */
  async function deliverDomain(item: QueueItem, domain: string, recipients: readonly string[], eightBit: boolean): Promise<Map<string, Outcome>> {
    const outcomes = new Map<string, Outcome>();
    const all = (outcome: Outcome): Map<string, Outcome> => {
      for (const r of recipients) outcomes.set(r, outcome);
      return outcomes;
    };
    const target = await destinations(domain);
    if ("status" in target) {
      log.info({ item: item.id, domain, host: null, result: target.diagnostic }, "delivery attempt");
      return all(target);
    }
    const smarthost = options.smarthost;
    // A smarthost with `verify` is checked whatever the MX setting says.
    const tlsOptions = smarthost?.verify ? { ...options.tlsOptions, rejectUnauthorized: true } : options.tlsOptions;
    let lastError = "4.4.1 no host could be reached";
    const candidates = target.hosts.flatMap((host) => host.addresses.map((address) => ({ host, address }))).slice(0, addressLimit);
    for (const { host, address } of candidates) {
      const where = `${host.name}[${address}]:${target.port}`;
      const key = `${address}:${target.port}`;
      let session: SmtpSession;
      try {
        const idle = pool.take(key);
        if (idle && (await idle.alive())) session = idle;
        else {
          idle?.abort();
          const open = (tls: "starttls" | "implicit" | "none") =>
            SmtpSession.open({
              host: address,
              port: target.port,
              hostname: options.hostname,
              tls,
              servername: host.name,
              timeoutMs,
              replyTimeoutMs,
              ...(options.dataTimeoutMs !== undefined ? { dataTimeoutMs: options.dataTimeoutMs } : {}),
              ...(tlsOptions ? { tlsOptions } : {}),
              ...(smarthost?.auth ? { auth: smarthost.auth } : {}),
              ...(smarthost ? { requireTls: smarthost.requireTls ?? smarthost.auth !== undefined } : {}),
            });
          try {
            session = await open(smarthost ? smarthost.tls : "starttls");
          } catch (error) {
            // Opportunistic TLS to an MX, as Postfix's "may": a server whose TLS we cannot speak (old
            // protocol versions or ciphers) still gets the mail, in plaintext on a new connection.
            // Never to the smarthost, which may require TLS or get a password.
            if (smarthost || !(error instanceof TlsHandshakeError)) throw error;
            log.warn({ item: item.id, domain, host: where, error: error.message }, "TLS handshake failed; trying again without TLS");
            session = await open("none");
          }
        }
      } catch (error) {
        // The host did not take the session: the next MX may (RFC 5321 5.1). Even a 5xx here (a refused
        // greeting, a smarthost password) says nothing about the recipients, so it stays temporary.
        lastError = error instanceof SmtpReplyError ? `${formatReply(error.reply)} (${where}, ${error.stage})` : `4.4.1 ${where}: ${message(error)}`;
        log.info({ item: item.id, domain, host: where, result: lastError }, "delivery attempt");
        continue;
      }
      sessions.add(session);
      try {
        // A non-ASCII address needs SMTPUTF8 even when the item does not say so (queued by an older
        // version, or by enqueueRelay without `utf8`): sent without it, a server would misread it.
        let utf8 = item.meta["smtputf8"] === "1" || !isAscii(item.sender) || !recipients.every(isAscii);
        if (utf8 && !session.has("SMTPUTF8")) {
          if (await needsUtf8(item, recipients)) {
            log.info({ item: item.id, domain, host: where, result: "no SMTPUTF8" }, "delivery attempt");
            return all({ status: "failed", diagnostic: `5.6.7 ${where} does not support SMTPUTF8, which the message needs` });
          }
          utf8 = false;
        }
        if (eightBit && !session.has("8BITMIME")) {
          // Downgrading would mean rewriting MIME parts; like most MTAs we send as is.
          log.warn({ item: item.id, domain, host: where }, "8-bit message sent to a server without 8BITMIME");
        }
        const transaction = (to: readonly string[]) =>
          session.send({
            sender: item.sender,
            recipients: to,
            size: item.size,
            eightBit,
            utf8,
            body: async () => withoutReturnPath(await queue!.readMessage(item.id)),
          });
        let todo: readonly string[] = recipients;
        for (let round = 0; todo.length > 0; round++) {
          let result: Awaited<ReturnType<typeof transaction>>;
          try {
            result = await transaction(todo);
          } catch (error) {
            // A later round failing leaves its recipients as the round before left them (pending); those
            // delivered before must not be touched.
            if (round === 0) throw error;
            log.info({ item: item.id, domain, host: where, error: message(error) }, "follow-up transaction failed");
            break;
          }
          const again: string[] = [];
          let delivered = false;
          for (const r of todo) {
            const got = result.recipients.get(r);
            if (!got) continue;
            const text = `${formatReply(got.reply)} (${where})`;
            // The reply alone would read like success (a 2xx) to whoever looks at the queue.
            const diagnostic = got.unexpected ? `4.5.0 unexpected reply to ${got.stage}: ${text}` : text;
            outcomes.set(r, { status: got.status, diagnostic });
            if (got.status === "delivered") delivered = true;
            else if (got.status === "pending" && got.stage === "RCPT" && (got.reply.code === 452 || got.reply.code === 552)) again.push(r);
          }
          // RFC 5321 4.5.3.1.10: a server that took some recipients and refused the rest as too many
          // gets the rest in a new transaction at once, as Postfix sends them. Only while each round
          // delivers something (a 452 for a full mailbox would come back the same), and on a connection
          // still in step with its replies and under its transaction limit; otherwise they wait.
          if (!delivered || !session.usable || session.transactions >= MAX_TRANSACTIONS_PER_CONNECTION) break;
          todo = again;
        }
        log.info({ item: item.id, domain, host: where, result: summary(outcomes) }, "delivery attempt");
        return outcomes;
      } catch (error) {
        if (error instanceof SmtpReplyError) {
          const text = `${formatReply(error.reply)} (${where}, ${error.stage})`;
          log.info({ item: item.id, domain, host: where, result: text }, "delivery attempt");
          return all({ status: error.permanent ? "failed" : "pending", diagnostic: text });
        }
        // Cut off mid-transaction: the server may or may not have the message; retry later.
        const text = `4.4.2 ${where}: ${message(error)}`;
        log.info({ item: item.id, domain, host: where, result: text }, "delivery attempt");
        return all({ status: "pending", diagnostic: text });
      } finally {
        // A session that failed mid-transaction is marked unusable and is closed, not pooled. It stays
        // in `sessions` until then, so that stop() can cut a QUIT that is not answered.
        await pool.give(key, session);
        sessions.delete(session);
      }
    }
    return all({ status: "pending", diagnostic: lastError });
  }

  async function handle(initial: QueueClaim): Promise<void> {
    let claim = initial;
    let lost = false;
    let done = false;
    const renewer = setInterval(() => {
      if (done) return;
      queue!.renew(claim).then(
        (renewed) => {
          claim = renewed;
        },
        (error: unknown) => {
          if (done) return;
          // Only a claim another worker took is lost. A renewal that failed otherwise (the store
          // briefly unreachable) is tried again at the next tick; throwing away what this attempt
          // delivered would only send it again.
          if (isStoreError(error) && error.code === "lease-lost") lost = true;
          log.warn({ item: claim.item.id, error: message(error) }, "claim renewal failed");
        },
      );
    }, Math.max(50, Math.floor(claimTtlMs / 3)));
    const item = initial.item;
    /**
     * Writes the outcome, trying again while the claim is still ours: if the store is briefly
     * unreachable just now, the claim would otherwise run out and the whole item go out again,
     * to the recipients this attempt delivered too.
     */
    const record = async (write: (current: QueueClaim) => Promise<void>): Promise<void> => {
      const giveUpAt = claim.expiresAt;
      for (let wait = 100; ; wait = Math.min(wait * 2, 2_000)) {
        try {
          await write(claim);
          return;
        } catch (error) {
          const leaseLost = isStoreError(error) && error.code === "lease-lost";
          if (lost || leaseLost || !isTemporaryError(error) || Date.now() + wait >= giveUpAt) throw error;
          log.warn({ item: item.id, error: message(error) }, "recording the delivery outcome failed; trying again");
          await new Promise((resolve) => setTimeout(resolve, wait));
        }
      }
    };
    try {
      const pending = item.recipients.filter((r) => r.status === "pending").map((r) => r.address);
      const { local, remote, outcomes: localOutcomes } = await partition(item, pending);
      const byDomain = new Map<string, string[]>();
      for (const address of remote) {
        const domain = safeDomain(address);
        byDomain.set(domain, [...(byDomain.get(domain) ?? []), address]);
      }
      if (local.size > 0) for (const [address, outcome] of await deliverLocal(item, local)) localOutcomes.set(address, outcome);
      // Not knowing (the message could not be read) counts as 8-bit: the delivery that reads it next
      // fails the same way and is rescheduled, with the local copies above recorded as delivered.
      const eightBit = remote.length > 0 ? await needsEightBit(item).catch(() => true) : false;
      const results = await Promise.all(
        [...byDomain].map(async ([domain, addresses]) => {
          const release = await domainSlot(options.smarthost ? "smarthost" : domain).acquire();
          try {
            return await deliverDomain(item, domain, addresses, eightBit);
          } catch (error) {
            const outcome: Outcome = { status: "pending", diagnostic: `4.3.0 ${message(error)}` };
            log.warn({ item: item.id, domain, error: message(error) }, "delivery attempt failed");
            return new Map(addresses.map((a) => [a, outcome] as const));
          } finally {
            release();
          }
        }),
      );
      const outcomes = new Map<string, Outcome>([...localOutcomes, ...results.flatMap((m) => [...m])]);
      // By age, not by attempts: attempts an operator forces (queue retry) must not use up the lifetime.
      const expiresAt = item.createdAt + lifetimeMs;
      const exhausted = Date.now() >= expiresAt;
      let recipients: QueueRecipient[] = item.recipients.map((r) => {
        const outcome = outcomes.get(r.address);
        return outcome ? { address: r.address, status: outcome.status, diagnostic: outcome.diagnostic } : r;
      });
      if (lost) return;
      const stillPending = recipients.filter((r) => r.status === "pending");
      if (stillPending.length > 0 && !exhausted) {
        // Recipients that failed for good are bounced now, as Postfix does at the end of an attempt,
        // not when the last of the others is delivered (which may be days away).
        const failedNow = unreported(recipients);
        if (failedNow.length > 0 && item.sender !== "") {
          try {
            await sendDsn(item, failedNow);
            recipients = recipients.map((r) => (failedNow.includes(r) ? { ...r, notified: true } : r));
          } catch (error) {
            // Not marked: the bounce is made again at the next attempt or when the item is done.
            log.error({ item: item.id, error: message(error) }, "could not make the delivery status notification");
          }
        }
        const delay = schedule[Math.min(item.attempts, schedule.length - 1)] ?? 0;
        const error = stillPending.map((r) => `<${r.address}>: ${r.diagnostic ?? "pending"}`).join("; ");
        // The last attempt falls on the end of the lifetime, not up to a whole step after it.
        const nextAttemptAt = Math.min(Date.now() + delay, expiresAt);
        await record((current) => queue!.reschedule(current, { nextAttemptAt, error, recipients }));
        return;
      }
      if (stillPending.length > 0) {
        const attempts = item.attempts + 1;
        const age = formatAge(Date.now() - item.createdAt);
        recipients = recipients.map((r) =>
          r.status === "pending"
            ? {
                address: r.address,
                status: "failed",
                diagnostic: `${expiredStatus(r.diagnostic)} gave up after ${age} in the queue and ${attempts} attempts; last error: ${r.diagnostic ?? "none"}`,
              }
            : r,
        );
      }
      const failed = unreported(recipients);
      if (failed.length > 0 && item.sender !== "") {
        try {
          await sendDsn(item, failed);
        } catch (error) {
          log.error({ item: item.id, error: message(error) }, "could not make the delivery status notification");
          // A store that is down or short of space now may take the bounce later: the item stays queued
          // (recipients settled, only the bounce left to make), as Postfix keeps a bounce it cannot
          // write yet, for up to another queue lifetime. Only then, or for an error that will not go
          // away, is it parked for an operator.
          if (isTemporaryError(error) && Date.now() < expiresAt + lifetimeMs) {
            const delay = schedule[Math.min(item.attempts, schedule.length - 1)] ?? 0;
            await record((current) => queue!.reschedule(current, { nextAttemptAt: Date.now() + delay, error: `bounce failed: ${message(error)}`, recipients }));
            return;
          }
          await record((current) => queue!.deadLetter(current, { error: `bounce failed: ${message(error)}`, recipients }));
          return;
        }
      }
      if (failed.length > 0 && item.sender === "") log.info({ item: item.id, failed: failed.length }, "bounce undeliverable; no bounce for a bounce");
      await record((current) => queue!.finish(current));
      const failedInAll = recipients.filter((r) => r.status === "failed").length;
      log.info({ item: item.id, delivered: recipients.length - failedInAll, failed: failedInAll }, "item done");
    } catch (error) {
      log.error({ item: item.id, error: message(error) }, isStoreError(error) && error.code === "lease-lost" ? "claim lost" : "delivery failed");
    } finally {
      done = true;
      clearInterval(renewer);
    }
  }

  /**
   * The listener queues a whole transaction, local recipients included (an MTA's queue manager does the
   * same): those go straight into their mailboxes here, the rest go out over SMTP.
   */
  async function partition(item: QueueItem, pending: readonly string[]) {
    const local = new Map<string, readonly string[]>();
    const remote: string[] = [];
    const outcomes = new Map<string, Outcome>();
    for (const address of pending) {
      try {
        const resolution = await resolveRecipient(options.store.directory, address);
        if (resolution.kind === "local") local.set(address, resolution.mailboxes);
        else if (resolution.kind === "unknown") outcomes.set(address, { status: "failed", diagnostic: "5.1.1 no such local mailbox" });
        else remote.push(address);
      } catch (error) {
        outcomes.set(address, { status: "pending", diagnostic: `4.3.0 recipient lookup failed: ${message(error)}` });
        log.warn({ item: item.id, to: address, error: message(error) }, "recipient lookup failed");
      }
    }
    return { local, remote, outcomes };
  }

  async function deliverLocal(item: QueueItem, local: ReadonlyMap<string, readonly string[]>): Promise<Map<string, Outcome>> {
    const mailboxes = [...new Set([...local.values()].flat())];
    let outcome: Outcome;
    try {
      // Acknowledged when it was queued: no soft limit of the store (store-fs's free-space reserve) may
      // turn it away now, only a hard failure.
      await options.store.deliver(mailboxes, withReturnPath(item.sender, await queue!.readMessage(item.id)), { accepted: true });
      outcome = { status: "delivered", diagnostic: "2.0.0 delivered to a local mailbox" };
    } catch (error) {
      const tooBig = isStoreError(error) && error.code === "too-big";
      outcome = isTemporaryError(error)
        ? { status: "pending", diagnostic: `4.3.0 local delivery failed: ${message(error)}` }
        : { status: "failed", diagnostic: tooBig ? "5.2.3 message too big for the mailbox" : `5.3.0 local delivery failed: ${message(error)}` };
    }
    log.info({ item: item.id, domain: "(local)", host: null, result: outcome.diagnostic }, "delivery attempt");
    return new Map([...local.keys()].map((address) => [address, outcome] as const));
  }

  async function sendDsn(item: QueueItem, failed: readonly QueueRecipient[]): Promise<void> {
    const originalHeaders = await readHeaders(await queue!.readMessage(item.id));
    const input = {
      hostname: options.hostname,
      to: item.sender,
      arrivalDate: new Date(item.createdAt),
      failed: failed.map((r) => ({ address: r.address, diagnostic: r.diagnostic ?? "5.0.0 delivery failed" })),
      originalHeaders,
      // Mail that came with SMTPUTF8 may have UTF-8 addresses and header fields: RFC 6533's report.
      utf8: item.meta["smtputf8"] === "1",
    };
    const utf8 = isGlobalDsn(input);
    const text = buildDsn(input);
    const bytes = new TextEncoder().encode(text);
    const resolution = await resolveRecipient(options.store.directory, item.sender);
    if (resolution.kind === "local") {
      const withPath = new TextEncoder().encode(`Return-Path: <>\r\n${text}`);
      // The bounce stands for mail already acknowledged: like that mail, never refused by a soft limit.
      await options.store.deliver(resolution.mailboxes, fromBytes(withPath), { accepted: true });
      log.info({ item: item.id, to: item.sender }, "bounce delivered locally");
    } else if (resolution.kind === "unknown") {
      // Our own domain but nobody there: nowhere to bounce to.
      log.warn({ item: item.id, to: item.sender }, "bounce dropped: the sender is not a local user");
    } else {
      // The RFC 6533 report is UTF-8: queued as SMTPUTF8 like the mail it reports on, so that it asks for
      // the extension, and a server without it gets the report only if the envelope and header section
      // are ASCII (needsUtf8); a UTF-8 sender's address never is.
      const envelope = { sender: "", recipients: [item.sender], ...(utf8 ? { meta: { smtputf8: "1" } } : {}) };
      const bounce = await queue!.enqueue(envelope, fromBytes(bytes), { accepted: true });
      log.info({ item: item.id, bounce: bounce.id, to: item.sender }, "bounce queued");
    }
  }

  function launch(claim: QueueClaim, release: () => void): Promise<void> {
    const task = handle(claim).finally(() => {
      release();
      running.delete(task);
    });
    running.add(task);
    return task;
  }

  async function runOnce(): Promise<number> {
    let handled = 0;
    const seen = new Set<string>();
    for (;;) {
      const claims = await queue!.claim({ holder, ttlMs: claimTtlMs, limit: concurrency });
      if (claims.length === 0) break;
      let repeat = false;
      const tasks: Promise<void>[] = [];
      for (const claim of claims) {
        if (seen.has(claim.item.id)) repeat = true;
        seen.add(claim.item.id);
        tasks.push(launch(claim, await slots.acquire()));
      }
      await Promise.all(tasks);
      handled += claims.length;
      // Items rescheduled with a short delay come back at once; one pass over them is enough.
      if (repeat || claims.length < concurrency || stopping) break;
    }
    return handled;
  }

  async function poll(): Promise<void> {
    pollTimer = null;
    try {
      const free = slots.free;
      if (free > 0 && !stopping) {
        const claims = await queue!.claim({ holder, ttlMs: claimTtlMs, limit: free });
        for (const claim of claims) void launch(claim, await slots.acquire());
      }
    } catch (error) {
      log.warn({ error: message(error) }, "claiming from the queue failed");
    }
    if (started && !stopping) pollTimer = setTimeout(() => void poll(), options.pollIntervalMs ?? 1_000);
  }

  async function logStats(): Promise<void> {
    try {
      const stats = await queueStats(queue!);
      log.info({ ...stats }, "queue");
    } catch (error) {
      log.warn({ error: message(error) }, "queue stats failed");
    }
  }

  return {
    start() {
      if (started) return;
      started = true;
      stopping = false;
      void poll();
      statsTimer = setInterval(() => void logStats(), options.statsIntervalMs ?? MINUTE);
    },
    async stop(stopOptions) {
      stopping = true;
      started = false;
      if (pollTimer) clearTimeout(pollTimer);
      if (statsTimer) clearInterval(statsTimer);
      pollTimer = null;
      statsTimer = null;
      const deadline = stopOptions?.deadlineMs ?? 30_000;
      const stopAt = Date.now() + deadline;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const expired = new Promise<"expired">((resolve) => {
        timer = setTimeout(() => resolve("expired"), deadline);
      });
      const result = await Promise.race([Promise.allSettled([...running]).then(() => "done" as const), expired]);
      clearTimeout(timer);
      if (result === "expired") {
        // Cut the connections: the deliveries record a temporary failure, or their claims expire.
        for (const session of sessions) session.abort();
        await Promise.race([Promise.allSettled([...running]), new Promise((resolve) => setTimeout(resolve, 2_000))]);
      }
      // A server that does not answer QUIT must not hold the shutdown past its deadline.
      await pool.closeAll(Math.min(replyTimeoutMs, Math.max(0, stopAt - Date.now())));
    },
    runOnce,
  };
}

function isAscii(text: string): boolean {
  return !/[^\x00-\x7f]/.test(text);
}

/** Recipients that failed for good and were not named in a bounce yet. */
function unreported(recipients: readonly QueueRecipient[]): QueueRecipient[] {
  return recipients.filter((r) => r.status === "failed" && r.notified !== true);
}

/** Recipients are grouped case-insensitively by domain: one connection serves them all. */
function safeDomain(address: string): string {
  return address.slice(address.lastIndexOf("@") + 1).toLowerCase();
}

/**
 * The temporary status a recipient expires with: the enhanced code at the start of its last error
 * ("451 4.7.1 greylisted", or our own "4.4.1 ..."), never digits further on (an IP address in the
 * text); else 4.4.7 (delivery time expired).
 */
function expiredStatus(diagnostic: string | undefined): string {
  return /^(?:\d{3}[ -])?(4\.\d{1,3}\.\d{1,3})\b/.exec(diagnostic ?? "")?.[1] ?? "4.4.7";
}

function summary(outcomes: ReadonlyMap<string, Outcome>): string {
  return [...outcomes].map(([r, o]) => `<${r}> ${o.status}: ${o.diagnostic}`).join("; ");
}

function message(error: unknown): string {
  if (error instanceof ConnectionError || error instanceof Error) return error.message;
  return String(error);
}
