import { Buffer } from "node:buffer";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";

/**
 * The only file that touches `node:net` and `node:tls`: a client socket that reads SMTP replies and
 * can be upgraded in place (STARTTLS). Keeping it in one place gives a runtime quirk one place to go.
 */

export interface TlsClientOptions {
  /** Verify the server certificate. Opportunistic STARTTLS to an MX does not (as MTAs do). */
  readonly rejectUnauthorized?: boolean;
  /** Extra trust anchors, PEM. */
  readonly ca?: string;
}

export interface Reply {
  readonly code: number;
  /** Text of each line, without the code and separator. */
  readonly lines: readonly string[];
}

/** A network-level failure (refused, reset, timeout, TLS handshake): always temporary for SMTP. */
export class ConnectionError extends Error {
  override readonly name: string = "ConnectionError";
}

/** The STARTTLS handshake failed (old protocol versions or ciphers, a broken server). */
export class TlsHandshakeError extends ConnectionError {
  override readonly name = "TlsHandshakeError";
}

export interface ConnectOptions {
  readonly host: string;
  readonly port: number;
  readonly implicitTls: boolean;
  /** Name for SNI and certificate checks. */
  readonly servername?: string;
  readonly tls?: TlsClientOptions;
  /** For the connection to open. */
  readonly timeoutMs: number;
  /** For each whole reply, a TLS handshake and a stalled write; default `timeoutMs`. */
  readonly replyTimeoutMs?: number;
}

/** Longest unfinished line kept; RFC 5321 4.5.3.1.5 allows 512 octets, servers send more. */
const MAX_LINE = 4096;
/**
 * Per reply, and for lines received but not read yet: a server that sends more is broken or hostile,
 * and without a cap it could fill the memory of the process that also serves the listeners.
 * The longest EHLO replies seen in practice are around 20 lines.
 */
export const MAX_REPLY_LINES = 100;
export const MAX_REPLY_BYTES = 64 * 1024;

export class ClientSocket {
  #socket: Socket;
  #buffer = "";
  #lines: string[] = [];
  /** Octets in `#lines`. */
  #bufferedBytes = 0;
  #waiter: (() => void) | null = null;
  #error: Error | null = null;
  #closed = false;
  #timeoutMs: number;
  #secure: boolean;

  private constructor(socket: Socket, timeoutMs: number, secure: boolean) {
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#secure = secure;
    this.#attach(socket);
  }

  static connect(options: ConnectOptions): Promise<ClientSocket> {
    return new Promise((resolve, reject) => {
      const servername = options.servername ?? options.host;
      const socket = options.implicitTls
        ? tlsConnect({ host: options.host, port: options.port, ...tlsParams(servername, options.tls) })
        : netConnect({ host: options.host, port: options.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ConnectionError(`connect to ${options.host}:${options.port} timed out`));
      }, options.timeoutMs);
      const fail = (error: Error): void => {
        clearTimeout(timer);
        reject(new ConnectionError(`connect to ${options.host}:${options.port}: ${error.message}`));
      };
      socket.once("error", fail);
      socket.once(options.implicitTls ? "secureConnect" : "connect", () => {
        clearTimeout(timer);
        socket.off("error", fail);
        socket.setNoDelay(true);
        resolve(new ClientSocket(socket, options.replyTimeoutMs ?? options.timeoutMs, options.implicitTls));
      });
    });
  }

  get secure(): boolean {
    return this.#secure;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #attach(socket: Socket): void {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      // Once failed, whatever else arrives is never read.
      if (this.#error) return;
      this.#buffer += chunk;
      let index: number;
      while ((index = this.#buffer.indexOf("\n")) >= 0) {
        const line = this.#buffer.slice(0, index).replace(/\r$/, "");
        this.#lines.push(line);
        this.#bufferedBytes += line.length;
        this.#buffer = this.#buffer.slice(index + 1);
      }
      if (this.#buffer.length > MAX_LINE) this.#abort(new ConnectionError("reply line too long"));
      else if (this.#lines.length > MAX_REPLY_LINES || this.#bufferedBytes > MAX_REPLY_BYTES) {
        this.#abort(new ConnectionError(`the server sent more than ${MAX_REPLY_LINES} lines or ${MAX_REPLY_BYTES} octets at once`));
      }
      this.#wake();
    });
    socket.on("error", (error: Error) => this.#fail(new ConnectionError(error.message)));
    socket.on("close", () => {
      this.#closed = true;
      this.#fail(new ConnectionError("connection closed by the server"));
    });
  }

  #fail(error: Error): void {
    this.#error ??= error;
    this.#wake();
  }

  /** Fails and hangs up, so that a flood stops arriving. */
  #abort(error: Error): void {
    this.#fail(error);
    this.#lines = [];
    this.#bufferedBytes = 0;
    this.#buffer = "";
    this.#socket.destroy();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  async #nextLine(deadline: number, timeoutMs: number): Promise<string> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) {
        this.#bufferedBytes -= line.length;
        return line;
      }
      if (this.#error) throw this.#error;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.#waiter = null;
          const error = new ConnectionError(`no complete reply within ${timeoutMs} ms`);
          this.#abort(error);
          reject(error);
        }, Math.max(0, deadline - Date.now()));
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /**
   * One (possibly multi-line) reply, complete within `timeoutMs` (default: the reply timeout). The
   * timeout bounds the whole reply (RFC 5321 4.5.3.2), so that a server that drips continuation
   * lines cannot hold the connection for ever.
   */
  async readReply(timeoutMs = this.#timeoutMs): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    const lines: string[] = [];
    let bytes = 0;
    for (;;) {
      const line = await this.#nextLine(deadline, timeoutMs);
      const match = /^(\d{3})([ -]?)(.*)$/.exec(line);
      if (!match) throw new ConnectionError(`malformed reply: ${line.slice(0, 100)}`);
      lines.push(match[3] ?? "");
      if (match[2] !== "-") return { code: Number(match[1]), lines };
      bytes += line.length;
      if (lines.length >= MAX_REPLY_LINES || bytes > MAX_REPLY_BYTES) {
        const error = new ConnectionError(`reply longer than ${MAX_REPLY_LINES} lines or ${MAX_REPLY_BYTES} octets`);
        this.#abort(error);
        throw error;
      }
    }
  }

  /**
   * Writes and waits for the socket to take the bytes (backpressure). Command text goes out as UTF-8:
   * addresses may be non-ASCII (SMTPUTF8, RFC 6531), and ASCII is the same in both. A server that stops reading
   * for the reply timeout, or goes away meanwhile, fails the write instead of leaving it waiting.
   */
  write(data: string | Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    const socket = this.#socket;
    return new Promise((resolve, reject) => {
      const ok = socket.write(typeof data === "string" ? Buffer.from(data, "utf8") : data, (error) => {
        if (error) reject(new ConnectionError(error.message));
      });
      if (ok) {
        resolve();
        return;
      }
      const done = (error: Error | null): void => {
        clearTimeout(timer);
        socket.off("drain", onDrain);
        socket.off("close", onClose);
        if (error) reject(error);
        else resolve();
      };
      const onDrain = (): void => done(null);
      const onClose = (): void => done(this.#error ?? new ConnectionError("connection closed while sending"));
      const timer = setTimeout(() => {
        socket.destroy();
        done(new ConnectionError(`the server took no data for ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      socket.once("drain", onDrain);
      socket.once("close", onClose);
    });
  }

  /** STARTTLS after the server's 220: wraps the same TCP connection. */
  upgrade(servername: string, options: TlsClientOptions | undefined): Promise<void> {
    const plain = this.#socket;
    plain.removeAllListeners("data");
    plain.removeAllListeners("close");
    plain.removeAllListeners("error");
    this.#lines = [];
    this.#bufferedBytes = 0;
    this.#buffer = "";
    return new Promise((resolve, reject) => {
      const secure: TLSSocket = tlsConnect({ socket: plain, ...tlsParams(servername, options) });
      const timer = setTimeout(() => {
        secure.destroy();
        reject(new TlsHandshakeError("TLS handshake timed out"));
      }, this.#timeoutMs);
      const fail = (error: Error): void => {
        clearTimeout(timer);
        secure.destroy();
        reject(new TlsHandshakeError(`TLS handshake: ${error.message}`));
      };
      secure.once("error", fail);
      secure.once("secureConnect", () => {
        clearTimeout(timer);
        secure.off("error", fail);
        this.#socket = secure;
        this.#secure = true;
        this.#attach(secure);
        resolve();
      });
    });
  }

  close(): void {
    this.#closed = true;
    this.#socket.destroy();
  }
}

function tlsParams(servername: string, options: TlsClientOptions | undefined): { rejectUnauthorized: boolean; servername?: string; ca?: string } {
  // SNI must not carry an IP address (RFC 6066 3).
  const isIp = /^[\d.]+$/.test(servername) || servername.includes(":");
  return {
    rejectUnauthorized: options?.rejectUnauthorized ?? false,
    ...(isIp ? {} : { servername }),
    ...(options?.ca !== undefined ? { ca: options.ca } : {}),
  };
}
