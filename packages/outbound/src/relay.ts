import { normalizeAddress, type EnqueueOptions, type Queue, type QueueItem, type Store } from "@mailroom/store";

export interface RelayEnvelope {
  /** "" for the null sender. */
  readonly sender: string;
  /** Local and remote recipients alike: the worker delivers local ones into their mailboxes. */
  readonly recipients: readonly string[];
  /** The message needs SMTPUTF8 (UTF-8 addresses or headers). */
  readonly utf8?: boolean;
  /** The client declared BODY=8BITMIME; when unknown the worker looks at the bytes itself. */
  readonly eightBit?: boolean;
  /** The authenticated submitter, for the operator's `queue list`. */
  readonly user?: string;
}

/**
 * Puts a message on the outbound queue, with the envelope data the worker reads back from `meta` (the
 * same keys the SMTP listener writes: `smtputf8` "1"/"0", `user`, and `body` "8BITMIME"/"7BIT").
 */
export function enqueueRelay(queue: Queue, envelope: RelayEnvelope, source: AsyncIterable<Uint8Array>, options?: EnqueueOptions): Promise<QueueItem> {
  const meta: Record<string, string> = { smtputf8: envelope.utf8 ? "1" : "0" };
  if (envelope.eightBit !== undefined) meta["body"] = envelope.eightBit ? "8BITMIME" : "7BIT";
  if (envelope.user !== undefined) meta["user"] = envelope.user;
  return queue.enqueue({ sender: envelope.sender, recipients: envelope.recipients, meta }, source, options);
}

/** Mirrors the listener's RecipientVerdict (in @mailroom/smtp-protocol) without depending on it. */
export type RelayVerdict = { readonly ok: true; readonly relay: true } | { readonly reject: "permanent" | "temporary"; readonly message?: string };

export interface RelayHooks {
  onRelay(address: string): Promise<RelayVerdict>;
}

/**
 * The submission listener's `onRelay` hook: recipients on other domains go to the store's outbound
 * queue. The listener then queues the whole transaction as one item (local recipients included), and
 * this package's worker delivers it. Equivalent to the listener's `relay: "queue"` option, plus a clear
 * refusal of malformed addresses and of stores without a queue.
 *
 * ```ts
 * createSmtpServer({ store, hostname, hooks: { ...relayToQueue(store) } });
 * ```
 */
export function relayToQueue(store: Store): RelayHooks {
  return {
    async onRelay(address) {
      if (!store.queue) return { reject: "permanent", message: "5.7.1 Delivery to other domains is not enabled" };
      try {
        normalizeAddress(address);
      } catch {
        return { reject: "permanent", message: "5.1.3 Bad recipient address syntax" };
      }
      return { ok: true, relay: true };
    },
  };
}
