import { StoreError } from "./errors.js";

/**
 * Small helpers over `AsyncIterable<Uint8Array>`, the stream type of the contract. Node Readables,
 * web ReadableStreams (on Node, Bun and Deno) and async generators all are such iterables, and pulling
 * with `for await` gives backpressure for free.
 */

const encoder = new TextEncoder();

/** A stream over fixed bytes or text, in chunks of at most `chunkSize` octets. */
export async function* fromBytes(data: Uint8Array | string, chunkSize = 64 * 1024): AsyncGenerator<Uint8Array> {
  const bytes = typeof data === "string" ? encoder.encode(data) : data;
  for (let offset = 0; offset < bytes.length; offset += chunkSize) {
    yield bytes.subarray(offset, Math.min(offset + chunkSize, bytes.length));
  }
}

/**
 * Reads a whole stream into one array. For tests and small messages only. Each chunk's octets are
 * copied as it comes: a source may reuse its buffer for the next chunk.
 */
export async function readAll(source: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  let out = new Uint8Array(0);
  let length = 0;
  for await (const chunk of source) {
    if (length + chunk.length > out.length) {
      const grown = new Uint8Array(Math.max(out.length * 2, length + chunk.length, 4096));
      grown.set(out.subarray(0, length));
      out = grown;
    }
    out.set(chunk, length);
    length += chunk.length;
  }
  return length === out.length ? out : out.slice(0, length);
}

/** Passes chunks through and fails with "too-big" as soon as more than `maxBytes` went by. */
export function limitBytes(source: AsyncIterable<Uint8Array>, maxBytes: number): AsyncGenerator<Uint8Array> {
  return guarded(source, maxBytes, undefined);
}

/** Passes chunks through until the signal aborts, then throws its reason. */
export function abortable(source: AsyncIterable<Uint8Array>, signal: AbortSignal): AsyncGenerator<Uint8Array> {
  return guarded(source, Infinity, signal);
}

/** Passes chunks through, failing with "too-big" past `maxBytes` and with the signal's reason once it aborts. */
async function* guarded(source: AsyncIterable<Uint8Array>, maxBytes: number, signal: AbortSignal | undefined): AsyncGenerator<Uint8Array> {
  signal?.throwIfAborted();
  let total = 0;
  for await (const chunk of source) {
    signal?.throwIfAborted();
    total += chunk.length;
    if (total > maxBytes) throw new StoreError("too-big", `message exceeds ${maxBytes} octets`);
    yield chunk;
  }
  signal?.throwIfAborted();
}

/**
 * Applies the append options every store honours the same way: size cap and abort. One generator for
 * both, not one each: every layer costs a few promises per chunk, and a small message is few chunks.
 */
export function guardAppendSource(
  source: AsyncIterable<Uint8Array>,
  options: { readonly maxBytes?: number | undefined; readonly signal?: AbortSignal | undefined } = {},
): AsyncIterable<Uint8Array> {
  if (options.maxBytes === undefined && !options.signal) return source;
  return guarded(source, options.maxBytes ?? Infinity, options.signal);
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * The POP3 TOP subset of a message: the header section, the empty line after it, and the first
 * `bodyLines` lines of the body. Works on CRLF and bare-LF text alike, and stops reading the source as
 * soon as it has enough, so a TOP of a 50 MB message reads only its first chunks.
 */
export async function* takeTop(source: AsyncIterable<Uint8Array>, bodyLines: number): AsyncGenerator<Uint8Array> {
  let inHeader = true;
  let lineHasText = false;
  let linesLeft = Math.max(0, Math.floor(bodyLines));
  for await (const chunk of source) {
    let i = 0;
    for (; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (inHeader) {
        if (b === LF) {
          if (!lineHasText) {
            inHeader = false;
            if (linesLeft === 0) {
              yield chunk.subarray(0, i + 1);
              return;
            }
          }
          lineHasText = false;
        } else if (b !== CR) {
          lineHasText = true;
        }
      } else if (b === LF && --linesLeft === 0) {
        yield chunk.subarray(0, i + 1);
        return;
      }
    }
    yield chunk;
  }
}

/** Counts the octets of a stream without keeping it. */
export async function countBytes(source: AsyncIterable<Uint8Array>): Promise<number> {
  let total = 0;
  for await (const chunk of source) total += chunk.length;
  return total;
}
