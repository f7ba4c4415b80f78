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
  /** For each reply, a TLS handshake and a stalled write; default `timeoutMs`. */
  readonly replyTimeoutMs?: number;
}

const MAX_LINE = 4096;

export class ClientSocket {
  #socket: Socket;
  #buffer = "";
  #lines: string[] = [];
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
      this.#buffer += chunk;
      let index: number;
      while ((index = this.#buffer.indexOf("\n")) >= 0) {
        this.#lines.push(this.#buffer.slice(0, index).replace(/\r$/, ""));
        this.#buffer = this.#buffer.slice(index + 1);
      }
      if (this.#buffer.length > MAX_LINE) this.#fail(new ConnectionError("reply line too long"));
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

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  async #nextLine(timeoutMs: number): Promise<string> {
    for (;;) {
      const line = this.#lines.shift();
      if (line !== undefined) return line;
      if (this.#error) throw this.#error;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.#waiter = null;
          this.#socket.destroy();
          reject(new ConnectionError(`no reply within ${timeoutMs} ms`));
        }, timeoutMs);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** One (possibly multi-line) reply, waiting at most `timeoutMs` (default: the connect timeout) per line. */
  async readReply(timeoutMs = this.#timeoutMs): Promise<Reply> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.#nextLine(timeoutMs);
      const match = /^(\d{3})([ -]?)(.*)$/.exec(line);
      if (!match) throw new ConnectionError(`malformed reply: ${line.slice(0, 100)}`);
      lines.push(match[3] ?? "");
      if (match[2] !== "-") return { code: Number(match[1]), lines };
    }
  }

  /**
   * Writes and waits for the socket to take the bytes (backpressure). A server that stops reading
   * for the reply timeout, or goes away meanwhile, fails the write instead of leaving it waiting.
   */
  write(data: string | Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    const socket = this.#socket;
    return new Promise((resolve, reject) => {
      const ok = socket.write(typeof data === "string" ? Buffer.from(data, "latin1") : data, (error) => {
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
