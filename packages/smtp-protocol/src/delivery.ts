import { isStoreError, type Store } from "@mailroom/store";
import { DataDecoder } from "./data-stream.js";
import { ChunkQueue } from "./queue.js";
import { R, rejectReply, type Reply } from "./replies.js";
import { traceHeaders, withProtocol } from "./trace.js";
import type { Envelope, Recipient, SessionInfo, SmtpHooks, SmtpLimits } from "./types.js";

/** One mail transaction, from MAIL to the end of its data. */
export interface Transaction {
  readonly id: string;
  readonly mailFrom: string;
  readonly utf8: boolean;
  readonly recipients: Recipient[];
  /** recipientKey() of each of `recipients`: a repeated RCPT is not added again. */
  readonly keys: Set<string>;
  /** RCPTs answered 250, repeated ones included (what maxRecipients limits). */
  accepted: number;
  /** Set once the first BDAT chunk arrived: the message is already streaming into the store. */
  bdat: Delivery | null;
}

/** A message on its way into the store while the client is still sending it. */
export interface Delivery {
  readonly decoder: DataDecoder;
  readonly queue: ChunkQueue;
  readonly controller: AbortController;
  /** Never rejects: the reply to send once the data is complete. */
  readonly result: Promise<Reply>;
  readonly envelope: Envelope;
}

export interface DeliverContext {
  readonly store: Store;
  readonly hooks: SmtpHooks;
  readonly info: SessionInfo;
  readonly maxBytes: number;
  readonly log: (fields: Record<string, unknown>, message: string) => void;
}

/**
 * Streams the message into the store (or the onData hook) and turns the outcome into a reply. The
 * 250 is only produced after the store said the copies are durable.
 */
export async function deliver(ctx: DeliverContext, envelope: Envelope, source: AsyncIterable<Uint8Array>, signal: AbortSignal): Promise<Reply> {
  try {
    if (ctx.hooks.onData) {
      const verdict = await ctx.hooks.onData(envelope, source, { ...ctx.info, signal });
      if (!("ok" in verdict)) return rejectReply("data", verdict);
    } else if (envelope.recipients.some((r) => r.relay) && ctx.store.queue) {
      // One durable queue item for the whole transaction: the worker delivers the local recipients
      // straight into their mailboxes and relays the rest, as an MTA's queue manager does.
      await ctx.store.queue.enqueue(
        {
          sender: envelope.mailFrom,
          recipients: envelope.recipients.map((r) => r.address),
          meta: { smtputf8: envelope.utf8 ? "1" : "0", ...(ctx.info.user ? { user: ctx.info.user.address } : {}) },
        },
        source,
        { signal, maxBytes: ctx.maxBytes },
      );
    } else {
      const mailboxes = [...new Set(envelope.recipients.flatMap((r) => r.mailboxes))];
      await ctx.store.deliver(mailboxes, source, { signal, maxBytes: ctx.maxBytes });
    }
    return R.accepted(envelope.id);
  } catch (error) {
    if (signal.aborted) return R.storeTemporary();
    ctx.log({ id: envelope.id, error: describe(error) }, "delivery failed");
    return storeErrorReply(error);
  }
}

/** Store errors to replies: the one mapping for SMTP. Details stay in the log. */
export function storeErrorReply(error: unknown): Reply {
  if (!isStoreError(error)) return R.storeTemporary();
  switch (error.code) {
    case "no-space":
      return R.storeNoSpace();
    case "too-big":
      return R.sizeExceeded();
    default:
      return error.temporary ? R.storeTemporary() : R.storePermanent();
  }
}

export function describe(error: unknown): string {
  if (isStoreError(error)) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}

export interface StartContext {
  readonly store: Store;
  readonly hooks: SmtpHooks;
  readonly info: SessionInfo;
  readonly hostname: string;
  /** EHLO (not HELO) was used. */
  readonly extended: boolean;
  readonly limits: SmtpLimits;
  readonly bareLineEndings: "reject" | "normalize";
  readonly log: (fields: Record<string, unknown>, message: string) => void;
  /** Aborts the delivery; the session may have used it for earlier ones (see DeliverOptions.signal). */
  readonly controller: AbortController;
}

const encoder = new TextEncoder();

/**
 * Opens the store delivery for a transaction as soon as its data starts (DATA, first BDAT): the trace
 * headers go first, then whatever the decoder gives out, through a queue with backpressure.
 */
export function startDelivery(ctx: StartContext, tx: Transaction, mode: "dot" | "raw"): Delivery {
  const decoder = new DataDecoder({
    mode,
    bareLineEndings: ctx.bareLineEndings,
    maxLineLength: ctx.limits.maxTextLine,
    maxBytes: ctx.limits.maxMessageBytes,
  });
  const queue = new ChunkQueue();
  const { controller } = ctx;
  const envelope: Envelope = { id: tx.id, mailFrom: tx.mailFrom, recipients: tx.recipients, utf8: tx.utf8 };
  const header = encoder.encode(
    traceHeaders({
      helo: ctx.info.helo,
      remoteAddress: ctx.info.remoteAddress,
      hostname: ctx.hostname,
      protocol: withProtocol({ extended: ctx.extended, utf8: tx.utf8, secure: ctx.info.secure, authenticated: ctx.info.user !== null }),
      id: tx.id,
      tls: ctx.info.tls,
      mailFrom: tx.mailFrom,
      utf8: tx.utf8,
      recipients: tx.recipients.map((r) => r.address),
      date: new Date(),
    }),
  );
  // The trace headers are simply the queue's first chunk (a wrapping generator cost promises per chunk).
  queue.push(header);
  const result = deliver(
    { store: ctx.store, hooks: ctx.hooks, info: ctx.info, maxBytes: ctx.limits.maxMessageBytes + header.length, log: ctx.log },
    envelope,
    queue,
    controller.signal,
  );
  // Whoever reads the message may stop early (an error, a hook that is done): then stop queueing.
  void result.then(() => queue.detach());
  return { decoder, queue, controller, result, envelope };
}
