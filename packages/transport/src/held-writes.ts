import type { Connection } from "./connection.js";

/** Held replies go out at once beyond this many octets. */
const DEFAULT_MAX_OCTETS = 16 * 1024;

/**
 * Replies held back while a session works through pipelined input, then sent in one write: a client
 * that sends several commands at once (MTAs send MAIL, RCPT… and DATA together; mpop its RETRs and
 * DELEs) gets its replies in one system call and one segment instead of one each, as Postfix's smtpd
 * does. The session decides when to hold and when to flush, because only it knows where its commands
 * end; it must flush whenever no complete command is left, so it never waits for the client with
 * replies held. At most `maxOctets` are held: a client that pipelines without end cannot make them
 * grow.
 */
export class HeldWrites {
  readonly #conn: Connection;
  readonly #maxOctets: number;
  #parts: (string | Uint8Array)[] = [];
  #octets = 0;
  #holding = false;

  constructor(connection: Connection, maxOctets = DEFAULT_MAX_OCTETS) {
    this.#conn = connection;
    this.#maxOctets = maxOctets;
  }

  /** Holds what is written from now on, until `flush`; `release` ends it. */
  hold(): void {
    this.#holding = true;
  }

  /** Sends what is held and writes at once again. Returns false under backpressure, as `write` does. */
  release(): boolean {
    this.#holding = false;
    return this.flush();
  }

  /**
   * Holds `parts` (or writes them at once when not holding, or once the limit is reached). Returns
   * false when the socket's buffer is full: the caller should then `await connection.drained()`.
   */
  write(parts: readonly (string | Uint8Array)[]): boolean {
    if (!this.#holding) return this.#conn.writeParts(parts);
    for (const part of parts) {
      this.#parts.push(part);
      this.#octets += part.length;
    }
    return this.#octets < this.#maxOctets || this.flush();
  }

  /** Forgets what is held: the session is closed, and its replies have nobody to go to. */
  discard(): void {
    this.#parts = [];
    this.#octets = 0;
  }

  /** Sends what is held, in one write. Returns false under backpressure. */
  flush(): boolean {
    if (this.#parts.length === 0) return true;
    const parts = this.#parts;
    this.#parts = [];
    this.#octets = 0;
    return this.#conn.writeParts(parts);
  }
}
