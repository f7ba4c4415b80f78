import { closeSync, readSync } from "node:fs";
import { fsError } from "./errors.js";
import { closeFd, openReadOnly, readSome } from "./fdio.js";

const CHUNK = 64 * 1024;
/** Largest read: a whole 100 KB message in one read() and one chunk for the socket. */
const MAX_CHUNK = 256 * 1024;
const CR = 0x0d;
const LF = 0x0a;

/**
 * A file as a stream of chunks of up to 256 KiB (64 KiB when the size is not known). The file is opened
 * before this is returned (so a message expunged later can still be read to the end), and closed when
 * the stream ends, fails or the consumer stops early (`return()`), even if it never pulled a chunk.
 *
 * `sizeHint` (the expected file size) sizes the buffers so that a message that fits is read with a
 * single read() plus nothing else: message files never change once they are in new/ or cur/, so a read
 * shorter than asked for is the end of the file and needs no extra read() to confirm it.
 *
 * With `sync`, reads and the close are synchronous calls (see `syncReadBytes` in the store options).
 */
export function fileChunks(fd: number, path: string, sizeHint?: number, sync = false): AsyncIterable<Uint8Array> {
  let closed = false;
  let ended = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    if (!sync) await closeFd(fd).catch(() => undefined);
    else {
      try {
        closeSync(fd);
      } catch {
        // Nothing was written through this descriptor: a failed close loses nothing.
      }
    }
  };
  let want = sizeHint === undefined ? CHUNK : Math.min(MAX_CHUNK, Math.max(1, sizeHint + 1));
  const iterator: AsyncIterableIterator<Uint8Array> = {
    async next(): Promise<IteratorResult<Uint8Array>> {
      if (closed || ended) {
        await close();
        return { done: true, value: undefined };
      }
      try {
        const buffer = new Uint8Array(want);
        const bytesRead = sync ? readSync(fd, buffer, 0, want, null) : await readSome(fd, buffer, 0, want);
        if (bytesRead === 0) {
          await close();
          return { done: true, value: undefined };
        }
        if (bytesRead < want) {
          // Short read of an immutable file: that was the end. Close now, not on the next pull.
          ended = true;
          await close();
          return { done: false, value: buffer.subarray(0, bytesRead) };
        }
        // The hint was low (a foreign file that grows when converted, or no hint): read bigger.
        want = Math.min(MAX_CHUNK, want * 2);
        return { done: false, value: buffer };
      } catch (error) {
        await close();
        throw fsError(error, "read", path);
      }
    },
    async return(): Promise<IteratorResult<Uint8Array>> {
      await close();
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return iterator;
    },
  };
  return iterator;
}

/** Counts the LF octets that have no CR before them, carrying the last octet across chunks. */
export class BareLfCounter {
  count = 0;
  octets = 0;

  constructor(private prevCr = false) {}

  get endsWithCr(): boolean {
    return this.prevCr;
  }

  push(chunk: Uint8Array): number {
    let found = 0;
    let at = chunk.indexOf(LF);
    while (at >= 0) {
      const before = at === 0 ? this.prevCr : chunk[at - 1] === CR;
      if (!before) found++;
      at = chunk.indexOf(LF, at + 1);
    }
    if (chunk.length > 0) this.prevCr = chunk[chunk.length - 1] === CR;
    this.count += found;
    this.octets += chunk.length;
    return found;
  }
}

/**
 * Turns bare LF line ends into CRLF on the fly (mail delivered by Postfix or Dovecot's LDA is stored
 * with LF; POP3 and our size contract need CRLF). Chunks without a bare LF pass through untouched.
 */
export async function* toCrlf(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let prevCr = false;
  for await (const chunk of source) {
    const bare = new BareLfCounter(prevCr).push(chunk);
    if (bare === 0) {
      if (chunk.length > 0) prevCr = chunk[chunk.length - 1] === CR;
      yield chunk;
      continue;
    }
    const out = new Uint8Array(chunk.length + bare);
    let o = 0;
    let last = prevCr;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b === LF && !last) out[o++] = CR;
      out[o++] = b;
      last = b === CR;
    }
    prevCr = last;
    yield out;
  }
}

/** The size a file has once converted to CRLF, read once without keeping it. */
export async function crlfSizeOf(path: string): Promise<number> {
  const fd = await openReadOnly(path);
  const counter = new BareLfCounter();
  for await (const chunk of fileChunks(fd, path)) counter.push(chunk);
  return counter.octets + counter.count;
}
