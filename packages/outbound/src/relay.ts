import { normalizeAddress, type EnqueueOptions, type MailboxId, type Queue, type QueueItem, type Store } from "@mailroom/store";

export interface RelayEnvelope {
  /** "" for the null sender. */
  readonly sender: string;
  readonly recipients: readonly string[];
  /** The message needs SMTPUTF8 (UTF-8 addresses or headers). */
  readonly utf8?: boolean;
  /** The client declared BODY=8BITMIME; when unknown the worker looks at the bytes itself. */
  readonly eightBit?: boolean;
  /** The authenticated submitter, for the operator's `queue list`. */
  readonly user?: string;
}

/** Puts a message on the outbound queue with the envelope data the worker reads back from `meta`. */
export function enqueueRelay(queue: Queue, envelope: RelayEnvelope, source: AsyncIterable<Uint8Array>, options?: EnqueueOptions): Promise<QueueItem> {
  const meta: Record<string, string> = {};
  if (envelope.utf8) meta["smtputf8"] = "1";
  if (envelope.eightBit !== undefined) meta["body"] = envelope.eightBit ? "8BITMIME" : "7BIT";
  if (envelope.user !== undefined) meta["user"] = envelope.user;
  return queue.enqueue({ sender: envelope.sender, recipients: envelope.recipients, meta }, source, options);
}

/* The shapes below mirror the SMTP listener's hooks (SmtpHooks in @mailroom/smtp-protocol) structurally,
   so that this package does not depend on the listener. */

export type RelayVerdict = { readonly ok: true; readonly mailboxes: readonly MailboxId[] } | { readonly reject: "permanent" | "temporary"; readonly message?: string };

export interface RelayDataEnvelope {
  readonly mailFrom: string;
  readonly recipients: readonly { readonly address: string; readonly mailboxes: readonly MailboxId[] }[];
  readonly utf8: boolean;
}

export interface RelayDataInfo {
  readonly user: { readonly address: string } | null;
  readonly signal: AbortSignal;
}

export interface RelayHooks {
  onRelay(address: string): Promise<RelayVerdict>;
  onData(
    envelope: RelayDataEnvelope,
    message: AsyncIterable<Uint8Array>,
    info: RelayDataInfo,
  ): Promise<{ readonly ok: true } | { readonly reject: "permanent" | "temporary"; readonly message?: string }>;
}

/**
 * Hooks for the submission listener: `onRelay` accepts recipients on other domains (marking them with no
 * local mailbox), and `onData` puts them on the queue and stores the local recipients' copies as usual.
 *
 * ```ts
 * createSmtpServer({ store, hostname, hooks: { ...relayToQueue(store) } });
 * ```
 *
 * The queued copy is the submitted message with our Received header but without Return-Path, which
 * only the final delivery adds (RFC 5321 4.4). The 250 comes only when both the queue and the local
 * copies are durable; if local delivery fails the queued item is removed again, so the client's retry
 * does not send twice.
 */
export function relayToQueue(store: Store, options: { readonly maxBytes?: number } = {}): RelayHooks {
  return {
    async onRelay(address) {
      if (!store.queue) return { reject: "permanent", message: "5.7.1 Delivery to other domains is not enabled" };
      try {
        normalizeAddress(address);
      } catch {
        return { reject: "permanent", message: "5.1.3 Bad recipient address syntax" };
      }
      // No mailbox: onData recognises relay recipients by this.
      return { ok: true, mailboxes: [] };
    },
    async onData(envelope, message, info) {
      const relay = envelope.recipients.filter((r) => r.mailboxes.length === 0).map((r) => r.address);
      const local = [...new Set(envelope.recipients.flatMap((r) => r.mailboxes))];
      const limits = { signal: info.signal, ...(options.maxBytes !== undefined ? { maxBytes: options.maxBytes } : {}) };
      if (relay.length === 0 || !store.queue) {
        await store.deliver(local, message, limits);
        return { ok: true };
      }
      const queue = store.queue;
      const split = splitReturnPath(message);
      const item = await enqueueRelay(
        queue,
        { sender: envelope.mailFrom, recipients: relay, utf8: envelope.utf8, ...(info.user ? { user: info.user.address } : {}) },
        split.rest,
        limits,
      );
      if (local.length > 0) {
        try {
          await store.deliver(local, prepend(split.returnPath(), await queue.readMessage(item.id)), { signal: info.signal });
        } catch (error) {
          await queue.remove(item.id).catch(() => undefined);
          throw error;
        }
      }
      return { ok: true };
    },
  };
}

const RETURN_PATH = new TextEncoder().encode("return-path:");

/** Takes a leading `Return-Path:` line off a message, keeping it for the local copies. */
function splitReturnPath(source: AsyncIterable<Uint8Array>): { rest: AsyncIterable<Uint8Array>; returnPath(): Uint8Array } {
  let line: Uint8Array = new Uint8Array(0);
  async function* rest(): AsyncGenerator<Uint8Array> {
    let head: Uint8Array = new Uint8Array(0);
    let decided = false;
    for await (const chunk of source) {
      if (decided) {
        yield chunk;
        continue;
      }
      head = concat(head, chunk);
      const end = head.indexOf(0x0a);
      if (end < 0 && head.length < 1024) continue;
      decided = true;
      if (end >= 0 && startsWithIgnoreCase(head, RETURN_PATH)) {
        line = head.slice(0, end + 1);
        head = head.subarray(end + 1);
      }
      if (head.length > 0) yield head;
    }
    if (!decided && head.length > 0) yield head;
  }
  return { rest: rest(), returnPath: () => line };
}

function startsWithIgnoreCase(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    const b = bytes[i] ?? 0;
    if ((b >= 0x41 && b <= 0x5a ? b + 0x20 : b) !== prefix[i]) return false;
  }
  return true;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

async function* prepend(first: Uint8Array, rest: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  if (first.length > 0) yield first;
  yield* rest;
}
