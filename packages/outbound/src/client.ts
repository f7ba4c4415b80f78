import { Buffer } from "node:buffer";
import { ClientSocket, ConnectionError, type Reply, type TlsClientOptions } from "./socket.js";

/**
 * A small SMTP client for relaying (RFC 5321): one connection, several transactions. It speaks only
 * what a relay needs and reports every reply so the worker can decide per recipient.
 */

export interface SessionOptions {
  readonly host: string;
  readonly port: number;
  /** Our EHLO name. */
  readonly hostname: string;
  readonly tls: "starttls" | "implicit" | "none";
  /** Refuse to go on without TLS (smarthost requireTls). */
  readonly requireTls?: boolean;
  readonly tlsOptions?: TlsClientOptions;
  /** Name the certificate is checked against (the MX name), when different from `host`. */
  readonly servername?: string;
  readonly auth?: { readonly username: string; readonly password: string };
  /** For the connection to open. */
  readonly timeoutMs: number;
  /** For each reply (and a stalled write); default `timeoutMs`. */
  readonly replyTimeoutMs?: number;
  /** Waiting for the reply to the end of data, when the server stores the message. Default 10 minutes (RFC 5321 4.5.3.2.6). */
  readonly dataTimeoutMs?: number;
}

/** A reply that ends an attempt: the server said no to the session or the transaction as a whole. */
export class SmtpReplyError extends Error {
  override readonly name = "SmtpReplyError";
  constructor(
    readonly reply: Reply,
    readonly stage: string,
  ) {
    super(`${stage}: ${formatReply(reply)}`);
  }
  get permanent(): boolean {
    return isFailure(this.reply.code);
  }
}

/** 5xx: refused for good. Anything else that is not the expected success is worth another try. */
function isFailure(code: number): boolean {
  return code >= 500 && code < 600;
}

export function formatReply(reply: Reply): string {
  return `${reply.code} ${reply.lines.join(" / ")}`.slice(0, 500);
}

export interface TransactionInput {
  readonly sender: string;
  readonly recipients: readonly string[];
  readonly size: number;
  readonly eightBit: boolean;
  readonly utf8: boolean;
  readonly body: () => Promise<AsyncIterable<Uint8Array>>;
}

/** The command a recipient's deciding reply answered. */
export type Stage = "RCPT" | "DATA" | "end of data";

export interface RecipientResult {
  /** The reply that decided: to RCPT when refused there, else to DATA or after the data. */
  readonly reply: Reply;
  readonly stage: Stage;
  readonly status: "delivered" | "failed" | "pending";
  /** A reply of a class or code the command cannot have (RFC 5321 4.2.1, 4.3.2): never success. */
  readonly unexpected: boolean;
}

export interface TransactionResult {
  readonly recipients: ReadonlyMap<string, RecipientResult>;
}

/**
 * How a refusal at `stage` counts. 5xx fails for good, except 552 to RCPT, which RFC 5321 4.5.3.1.10
 * says to take as temporary (too many recipients). Everything else is temporary: 4xx by definition,
 * and a code the command cannot have (1xx, 3xx, 252, 2xx to DATA), because only 250/251 to RCPT,
 * 354 to DATA and 250 after the data say that the server took the message.
 */
function refused(stage: Stage, reply: Reply): RecipientResult {
  const failed = isFailure(reply.code) && !(stage === "RCPT" && reply.code === 552);
  const unexpected = reply.code < 400 || reply.code >= 600;
  return { reply, stage, status: failed ? "failed" : "pending", unexpected };
}

export class SmtpSession {
  readonly extensions = new Map<string, string>();
  #socket: ClientSocket;
  #options: SessionOptions;
  #broken = false;
  /** Transactions sent on this connection, to stay under servers' per-connection limits. */
  transactions = 0;

  private constructor(socket: ClientSocket, options: SessionOptions) {
    this.#socket = socket;
    this.#options = options;
  }

  static async open(options: SessionOptions): Promise<SmtpSession> {
    const socket = await ClientSocket.connect({
      host: options.host,
      port: options.port,
      implicitTls: options.tls === "implicit",
      ...(options.servername !== undefined ? { servername: options.servername } : {}),
      ...(options.tlsOptions ? { tls: options.tlsOptions } : {}),
      timeoutMs: options.timeoutMs,
      ...(options.replyTimeoutMs !== undefined ? { replyTimeoutMs: options.replyTimeoutMs } : {}),
    });
    const session = new SmtpSession(socket, options);
    try {
      await session.#handshake();
      return session;
    } catch (error) {
      socket.close();
      throw error;
    }
  }

  get secure(): boolean {
    return this.#socket.secure;
  }

  /** Still fit for another transaction. */
  get usable(): boolean {
    return !this.#broken && !this.#socket.closed;
  }

  has(extension: string): boolean {
    return this.extensions.has(extension);
  }

  async #handshake(): Promise<void> {
    const greeting = await this.#socket.readReply();
    if (greeting.code !== 220) throw new SmtpReplyError(greeting, "greeting");
    await this.#hello();
    if (!this.#socket.secure && this.#options.tls !== "none" && this.has("STARTTLS")) {
      const reply = await this.#command("STARTTLS");
      if (reply.code === 220) {
        await this.#socket.upgrade(this.#options.servername ?? this.#options.host, this.#options.tlsOptions);
        await this.#hello();
      } else if (this.#options.requireTls) {
        throw new SmtpReplyError(reply, "STARTTLS");
      }
    }
    if (this.#options.requireTls && !this.#socket.secure) {
      throw new SmtpReplyError({ code: 421, lines: ["4.7.0 TLS required but not offered by the server"] }, "STARTTLS");
    }
    if (this.#options.auth) await this.#authenticate(this.#options.auth);
  }

  async #hello(): Promise<void> {
    this.extensions.clear();
    let reply = await this.#command(`EHLO ${this.#options.hostname}`);
    if (reply.code === 250) {
      for (const line of reply.lines.slice(1)) {
        const [keyword = "", ...rest] = line.trim().split(/\s+/);
        this.extensions.set(keyword.toUpperCase(), rest.join(" "));
      }
      return;
    }
    // An old server without ESMTP: plain HELO, no extensions.
    reply = await this.#command(`HELO ${this.#options.hostname}`);
    if (reply.code !== 250) throw new SmtpReplyError(reply, "HELO");
  }

  async #authenticate(auth: { readonly username: string; readonly password: string }): Promise<void> {
    const mechanisms = (this.extensions.get("AUTH") ?? "").toUpperCase().split(/\s+/);
    const b64 = (text: string): string => Buffer.from(text, "utf8").toString("base64");
    let reply: Reply;
    if (mechanisms.includes("PLAIN")) {
      reply = await this.#command(`AUTH PLAIN ${b64(`\0${auth.username}\0${auth.password}`)}`);
    } else if (mechanisms.includes("LOGIN")) {
      reply = await this.#command("AUTH LOGIN");
      if (reply.code === 334) reply = await this.#command(b64(auth.username));
      if (reply.code === 334) reply = await this.#command(b64(auth.password));
    } else {
      throw new SmtpReplyError({ code: 454, lines: ["4.7.0 the server offers no AUTH PLAIN or LOGIN"] }, "AUTH");
    }
    if (reply.code !== 235) throw new SmtpReplyError(reply, "AUTH");
  }

  async #command(line: string): Promise<Reply> {
    await this.#socket.write(`${line}\r\n`);
    return this.#socket.readReply();
  }

  /**
   * One mail transaction. Throws SmtpReplyError when MAIL or DATA as a whole is refused and
   * ConnectionError when the connection fails; otherwise reports a reply per recipient.
   */
  async send(input: TransactionInput): Promise<TransactionResult> {
    this.transactions++;
    try {
      return await this.#send(input);
    } catch (error) {
      this.#broken = true;
      throw error;
    }
  }

  async #send(input: TransactionInput): Promise<TransactionResult> {
    const params: string[] = [];
    if (this.has("SIZE")) {
      const limit = Number(this.extensions.get("SIZE"));
      if (limit > 0 && input.size > limit) {
        throw new SmtpReplyError({ code: 552, lines: [`5.3.4 message too big for the server (${input.size} > ${limit} octets)`] }, "SIZE");
      }
      params.push(`SIZE=${input.size}`);
    }
    if (input.eightBit && this.has("8BITMIME")) params.push("BODY=8BITMIME");
    if (input.utf8) params.push("SMTPUTF8");
    const mail = await this.#command(`MAIL FROM:<${input.sender}>${params.map((p) => ` ${p}`).join("")}`);
    if (mail.code !== 250) {
      await this.#reset();
      throw new SmtpReplyError(mail, "MAIL FROM");
    }
    const results = new Map<string, RecipientResult>();
    const refuse = (recipients: readonly string[], stage: Stage, reply: Reply): void => {
      const result = refused(stage, reply);
      // A server that answers out of turn may be in any state: no further transaction on it.
      if (result.unexpected) this.#broken = true;
      for (const recipient of recipients) results.set(recipient, result);
    };
    const accepted: string[] = [];
    for (const recipient of input.recipients) {
      const reply = await this.#command(`RCPT TO:<${recipient}>`);
      if (reply.code === 250 || reply.code === 251) accepted.push(recipient);
      else refuse([recipient], "RCPT", reply);
    }
    if (accepted.length === 0) {
      await this.#reset();
      return { recipients: results };
    }
    const data = await this.#command("DATA");
    if (data.code !== 354) {
      await this.#reset();
      refuse(accepted, "DATA", data);
      return { recipients: results };
    }
    await this.#streamBody(await input.body());
    const end = await this.#socket.readReply(Math.max(this.#options.replyTimeoutMs ?? this.#options.timeoutMs, this.#options.dataTimeoutMs ?? 10 * 60_000));
    if (end.code === 250) {
      const delivered: RecipientResult = { reply: end, stage: "end of data", status: "delivered", unexpected: false };
      for (const recipient of accepted) results.set(recipient, delivered);
    } else refuse(accepted, "end of data", end);
    return { recipients: results };
  }

  /** Before reusing an idle connection: true if the server still answers. */
  async alive(): Promise<boolean> {
    if (!this.usable) return false;
    try {
      const reply = await this.#command("RSET");
      return reply.code === 250;
    } catch {
      this.#broken = true;
      return false;
    }
  }

  async #reset(): Promise<void> {
    try {
      const reply = await this.#command("RSET");
      if (reply.code !== 250) this.#broken = true;
    } catch {
      // The server hung up after its refusal: that refusal is the answer, not the lost connection.
      this.#broken = true;
    }
  }

  /** Dot-stuffs (RFC 5321 4.5.2) while streaming, and ends with CRLF . CRLF. */
  async #streamBody(body: AsyncIterable<Uint8Array>): Promise<void> {
    const stuffer = new DotStuffer();
    for await (const chunk of body) {
      const out = stuffer.push(chunk);
      if (out.length > 0) await this.#socket.write(out);
    }
    await this.#socket.write(stuffer.end());
  }

  /**
   * Says QUIT and waits for the answer at most `timeoutMs` (default the reply timeout), then closes
   * either way: at shutdown the caller has a deadline of its own to keep.
   */
  async quit(timeoutMs = this.#options.replyTimeoutMs ?? this.#options.timeoutMs): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (!this.#socket.closed && !this.#broken) {
        const said = (async () => {
          await this.#socket.write("QUIT\r\n");
          await this.#socket.readReply(timeoutMs);
        })();
        // The write alone may wait for a server that stopped reading.
        await Promise.race([said, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
      }
    } catch {
      // The server may close without answering QUIT: nothing was lost.
    } finally {
      clearTimeout(timer);
      this.#socket.close();
    }
  }

  /** Drops the connection without QUIT (shutdown deadline). */
  abort(): void {
    this.#broken = true;
    this.#socket.close();
  }
}

const DOT = 0x2e;
const CR = 0x0d;
const LF = 0x0a;

/** Doubles a dot at the start of each line; remembers across chunks whether a line just started. */
export class DotStuffer {
  #atLineStart = true;
  #last = -1;
  #secondLast = -1;

  push(chunk: Uint8Array): Uint8Array {
    let dots = 0;
    let atStart = this.#atLineStart;
    for (const byte of chunk) {
      if (atStart && byte === DOT) dots++;
      atStart = byte === LF;
    }
    const out = new Uint8Array(chunk.length + dots);
    let j = 0;
    for (const byte of chunk) {
      if (this.#atLineStart && byte === DOT) out[j++] = DOT;
      out[j++] = byte;
      this.#atLineStart = byte === LF;
      this.#secondLast = this.#last;
      this.#last = byte;
    }
    return out;
  }

  /** The terminator; adds a CRLF first when the message does not end with one. */
  end(): Uint8Array {
    const endsWithCrlf = this.#secondLast === CR && this.#last === LF;
    return new TextEncoder().encode(endsWithCrlf || this.#last === -1 ? ".\r\n" : "\r\n.\r\n");
  }
}

export { ConnectionError, type Reply };
