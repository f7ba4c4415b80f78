import { Buffer } from "node:buffer";
import { isStoreError, isTemporaryError } from "@mailroom/store";

/** RFC 2449 / 3206 extended response codes this server uses. */
export type ResponseCode = "IN-USE" | "LOGIN-DELAY" | "SYS/TEMP" | "SYS/PERM" | "AUTH";

export const ok = (text?: string): string => (text ? `+OK ${text}\r\n` : "+OK\r\n");

export const err = (text: string, code?: ResponseCode): string =>
  code ? `-ERR [${code}] ${text}\r\n` : `-ERR ${text}\r\n`;

/** A multi-line reply with short lines (LIST, UIDL, CAPA): status, lines (stuffed), terminator. */
export function multiline(status: string, lines: readonly string[]): string {
  let out = status;
  for (const line of lines) out += (line.startsWith(".") ? `.${line}` : line) + "\r\n";
  return `${out}.\r\n`;
}

/**
 * The one place where store failures become POP3 replies. `failed` says what could not be done, in
 * words for the user; the cause goes only to the log, at the call site.
 */
export function storeErrorReply(error: unknown, failed: string): string {
  if (isStoreError(error) && error.code === "in-use") return err("mailbox is in use by another session", "IN-USE");
  if (isTemporaryError(error)) return err(`${failed}, try again later`, "SYS/TEMP");
  return err(failed, "SYS/PERM");
}

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const LF_DOT = Buffer.from("\n.");
const EXTRA_DOT: Uint8Array = Uint8Array.of(DOT);
const END = Buffer.from(".\r\n");
const CRLF_END = Buffer.from("\r\n.\r\n");

/**
 * Dot-stuffing for a multi-line reply whose body arrives in chunks (RFC 1939 section 3): every line
 * that starts with "." gets one more. It hands back views of the input plus a shared "." so nothing is
 * copied, and it finds line starts with `indexOf("\n.")` instead of walking lines, which keeps a 50 MB
 * RETR cheap. Bytes are passed exactly as stored (bare LFs stay bare LFs), so LIST sizes stay true.
 */
export class DotStuffer {
  #atLineStart = true;
  #last = -1;
  #beforeLast = -1;

  /** The pieces to write for one chunk of the message, in order. */
  push(chunk: Uint8Array): Uint8Array[] {
    const pieces: Uint8Array[] = [];
    if (chunk.length === 0) return pieces;
    if (this.#atLineStart && chunk[0] === DOT) pieces.push(EXTRA_DOT);
    const view = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    let start = 0;
    for (let hit = view.indexOf(LF_DOT); hit !== -1; hit = view.indexOf(LF_DOT, hit + 1)) {
      pieces.push(chunk.subarray(start, hit + 1), EXTRA_DOT);
      start = hit + 1;
    }
    pieces.push(start === 0 ? chunk : chunk.subarray(start));
    this.#beforeLast = chunk.length > 1 ? chunk[chunk.length - 2]! : this.#last;
    this.#last = chunk[chunk.length - 1]!;
    this.#atLineStart = this.#last === LF;
    return pieces;
  }

  /** The terminator; a message that does not end in CRLF gets one first, so "." stands on its own line. */
  end(): Uint8Array {
    const empty = this.#last === -1;
    return empty || (this.#last === LF && this.#beforeLast === CR) ? END : CRLF_END;
  }
}
