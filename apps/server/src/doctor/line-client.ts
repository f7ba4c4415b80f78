/**
 * A tiny line-oriented client for talking to our own listeners: plain TCP first, then TLS on the same
 * socket (STARTTLS/STLS, and implicit TLS too, so that "connected" and "handshake failed" stay separate
 * verdicts). Only node:net and node:tls, which Node, Bun and Deno all provide for client sockets.
 */
import { Buffer } from "node:buffer";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";

/** Why a network step did not complete. `code` is the system error code (ECONNREFUSED, …) or ours. */
/** Octets held without a line end before the doctor gives up on a server. */
const MAX_BUFFERED = 64 * 1024;
/** Lines of one SMTP reply or POP3 answer; the longest EHLO and CAPA replies have a few dozen. */
const MAX_REPLY_LINES = 200;

export class NetProblem extends Error {
  override readonly name = "NetProblem";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function asProblem(error: unknown): NetProblem {
  if (error instanceof NetProblem) return error;
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  return new NetProblem(typeof code === "string" ? code : "EUNKNOWN", message.split("\n")[0]!);
}

export interface TlsOptions {
  readonly servername?: string;
  readonly ca?: string;
}

export class LineClient {
  #socket: Socket | TLSSocket;
  #buffer = "";
  #problem: NetProblem | null = null;
  #closed = false;
  #wake: (() => void) | null = null;
  readonly #timeoutMs: number;
  #tls: TLSSocket | null = null;

  private constructor(socket: Socket, timeoutMs: number) {
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#attach(socket);
  }

  /** Opens the TCP connection. Rejects with a NetProblem (ECONNREFUSED, ETIMEDOUT, …). */
  static connect(host: string, port: number, timeoutMs: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new NetProblem("ETIMEDOUT", `no answer within ${seconds(timeoutMs)}`));
      }, timeoutMs);
      const onError = (error: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(asProblem(error));
      };
      socket.once("error", onError);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.removeListener("error", onError);
        resolve(new LineClient(socket, timeoutMs));
      });
    });
  }

  get secure(): boolean {
    return this.#tls !== null;
  }

  /** The TLS socket after `startTls`, for certificate and cipher details. */
  get tlsSocket(): TLSSocket | null {
    return this.#tls;
  }

  /**
   * Runs the TLS handshake over the current socket. The certificate is not judged here
   * (rejectUnauthorized off, no identity check): the doctor reports on it instead of refusing it.
   */
  async startTls(options: TlsOptions): Promise<TLSSocket> {
    const plain = this.#socket as Socket;
    this.#detach(plain);
    // Errors now surface on the TLS socket; keep the plain one from throwing an unhandled 'error'.
    plain.on("error", () => {});
    // Nothing the server sent before the handshake may be read as if it had come over TLS.
    this.#buffer = "";
    const tls = tlsConnect({
      socket: plain,
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
      ...(options.servername ? { servername: options.servername } : {}),
      ...(options.ca ? { ca: options.ca } : {}),
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        tls.destroy();
        reject(new NetProblem("ETIMEDOUT", `no TLS handshake within ${seconds(this.#timeoutMs)}`));
      }, this.#timeoutMs);
      const onError = (error: Error): void => {
        clearTimeout(timer);
        tls.destroy();
        reject(asProblem(error));
      };
      const onClose = (): void => onError(new NetProblem("ECONNRESET", "the server closed the connection during the TLS handshake"));
      tls.once("error", onError);
      tls.once("close", onClose);
      tls.once("secureConnect", () => {
        clearTimeout(timer);
        tls.removeListener("error", onError);
        tls.removeListener("close", onClose);
        resolve();
      });
    });
    this.#socket = tls;
    this.#tls = tls;
    this.#attach(tls);
    return tls;
  }

  send(line: string): void {
    this.#socket.write(`${line}\r\n`);
  }

  /** The next line without CRLF. Rejects on timeout, close or socket error. */
  async readLine(): Promise<string> {
    const deadline = Date.now() + this.#timeoutMs;
    for (;;) {
      const end = this.#buffer.indexOf("\n");
      if (end >= 0) {
        const line = this.#buffer.slice(0, end).replace(/\r$/, "");
        this.#buffer = this.#buffer.slice(end + 1);
        return line;
      }
      if (this.#problem) throw this.#problem;
      if (this.#closed) throw new NetProblem("ECLOSED", "the server closed the connection");
      const left = deadline - Date.now();
      if (left <= 0) throw new NetProblem("ETIMEDOUT", `no reply within ${seconds(this.#timeoutMs)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  /** An SMTP reply: all `NNN-` lines and the final `NNN ` line. */
  async readSmtpReply(): Promise<{ code: number; lines: string[] }> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.readLine();
      lines.push(line);
      if (lines.length > MAX_REPLY_LINES) throw new NetProblem("ELINE", `the server sent a reply of more than ${MAX_REPLY_LINES} lines`);
      if (!/^\d{3}-/.test(line)) return { code: /^\d{3}/.test(line) ? Number(line.slice(0, 3)) : 0, lines };
    }
  }

  /** The lines of a POP3 multi-line answer after its +OK line, up to the lone ".". */
  async readPop3Body(): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.readLine();
      if (line === ".") return lines;
      lines.push(line.startsWith("..") ? line.slice(1) : line);
      // The doctor reads only CAPA and the like, a few dozen lines at most.
      if (lines.length > MAX_REPLY_LINES) throw new NetProblem("ELINE", `the server sent a reply of more than ${MAX_REPLY_LINES} lines`);
    }
  }

  close(): void {
    this.#socket.destroy();
  }

  #attach(socket: Socket): void {
    socket.on("data", this.#onData);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
  }

  #detach(socket: Socket): void {
    socket.removeListener("data", this.#onData);
    socket.removeListener("error", this.#onError);
    socket.removeListener("close", this.#onClose);
  }

  readonly #onData = (chunk: Uint8Array | string): void => {
    this.#buffer += typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("latin1");
    // No server line is anywhere near this long; a host that sends one without end is broken or hostile.
    if (this.#buffer.length > MAX_BUFFERED && (this.#buffer.lastIndexOf("\n") < 0 || this.#buffer.length > 16 * MAX_BUFFERED)) {
      this.#problem ??= new NetProblem("ELINE", `the server sent a line longer than ${MAX_BUFFERED} octets`);
      this.#socket.destroy();
    }
    this.#wake?.();
  };

  readonly #onError = (error: Error): void => {
    this.#problem ??= asProblem(error);
    this.#wake?.();
  };

  readonly #onClose = (): void => {
    this.#closed = true;
    this.#wake?.();
  };
}

export function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}
