import type { Reply } from "./replies.js";
import type { Delivery, Transaction } from "./delivery.js";

/**
 * CHUNKING (RFC 3030). A BDAT command announces exactly how many octets follow; they are read raw (no
 * dot-stuffing, no end marker). Every chunk must be consumed, even one that will be refused, or the
 * session would read message text as commands. A chunk larger than the whole message limit is not
 * read at all: the connection is closed instead, so a client cannot make the server swallow endless
 * data.
 */
export type BdatPhase =
  /** Reading a chunk that belongs to a transaction. */
  | {
      readonly kind: "bdat";
      readonly tx: Transaction;
      readonly delivery: Delivery;
      readonly size: number;
      remaining: number;
      readonly last: boolean;
    }
  /** Reading a chunk only to throw it away, then answering `reply`. */
  | { readonly kind: "bdat-discard"; remaining: number; readonly reply: Reply; readonly back: BdatReturn };

/** Where a refused chunk leaves the session: where it was. */
export type BdatReturn = { readonly kind: "fresh" } | { readonly kind: "idle" } | { readonly kind: "mail"; readonly tx: Transaction };

/** Splits off the part of `input` that belongs to the current chunk. */
export function takeChunk(remaining: number, input: Uint8Array): { chunk: Uint8Array; rest: Uint8Array } {
  const n = Math.min(remaining, input.length);
  return { chunk: input.subarray(0, n), rest: input.subarray(n) };
}
