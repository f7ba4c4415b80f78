import type { Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { LineDeadline } from "./line-deadline.js";
import { noteSpentBytes } from "./spent-buffers.js";
import type { TlsContext } from "./tls-context.js";

/** What a protocol session hears from its connection. */
export interface ConnectionEvents {
  /**
   * Bytes arrived, in a buffer of their own that the session may keep without copying: Node, Bun and
   * Deno each hand every read a fresh buffer, plain and TLS alike (tests/runtimes sends a message that
   * spans many reads through each runtime and compares it octet for octet).
   */
  data(chunk: Uint8Array): void;
  /**
   * The peer will send nothing more: it half-closed (shut down its sending side), and everything it
   * sent before came through `data`. The connection stays open for writing, so a client that sends a
   * whole pipelined conversation and then shuts down its side still gets every answer; call `end()`
   * once those are out. Without this handler the connection ends at once.
   */
  inputEnd?(): void;
  /** The peer closed, the connection failed, or `destroy`/`end` finished. Called once. */
  close(): void;
  /**
   * No bytes in either direction for the idle timeout ("idle"), or a line not finished within the
   * line timeout ("line"). The session should reply and end.
   */
  timeout?(reason: "idle" | "line"): void;
}

export interface TlsInfo {
  readonly protocol: string;
  readonly cipher: string;
}

let counter = 0;
const idPrefix = Math.floor(Date.now() / 1000).toString(36);

/**
 * One client connection, plain or TLS, with the few operations a line protocol needs. Everything that
 * touches `node:net` and `node:tls` lives in this package, so a runtime-specific fix has one place to go.
 */
export class Connection {
  /** Short unique id for logs. */
  readonly id = `${idPrefix}${(counter++).toString(36)}`;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  #socket: Socket;
  #events: ConnectionEvents | undefined;
  #closed = false;
  #tls: TlsInfo | null = null;
  #upgrading = false;
  /** Kept so that the TLS socket that replaces the plain one after STARTTLS gets the same timeout. */
  #idleMs = 0;
  /**
   * Decrypted bytes that arrived while an upgrade was finishing. Some runtimes (Deno) deliver the
   * client's first TLS record before the handshake's "secure" event; the session must only see them
   * once `upgradeToTls` has resolved and `secure` is true.
   */
  #held: Buffer[] | null = null;
  /** The peer's end of input came while bytes were held: it is passed on after them. */
  #endAfterHeld = false;
  readonly #lineDeadline = new LineDeadline(() => this.#timedOut("line"));

  constructor(socket: Socket) {
    this.#socket = socket;
    this.remoteAddress = normaliseAddress(socket.remoteAddress ?? "");
    this.remotePort = socket.remotePort ?? 0;
    this.localAddress = normaliseAddress(socket.localAddress ?? "");
    this.localPort = socket.localPort ?? 0;
    if (socket instanceof TLSSocket && socket.encrypted) this.#tls = tlsInfo(socket);
    socket.setNoDelay(true);
    this.#attach(socket);
  }

  /** True once the connection is encrypted (implicit TLS or after a STARTTLS/STLS upgrade). */
  get secure(): boolean {
    return this.#tls !== null;
  }

  get tls(): TlsInfo | null {
    return this.#tls;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The peer is on this machine (127.0.0.0/8 or ::1). */
  get isLoopback(): boolean {
    return this.remoteAddress === "::1" || this.remoteAddress.startsWith("127.");
  }

  /** Starts delivering events. Call once, right after the connection is handed over. */
  start(events: ConnectionEvents): void {
    this.#events = events;
    if (this.#closed) events.close();
  }

  /**
   * Queues bytes for the peer. Returns false when the kernel buffer is full: the caller should then
   * `await drained()` before writing more, which is what keeps memory bounded for slow clients.
   */
  write(data: string | Uint8Array): boolean {
    if (this.#closed) return false;
    if (typeof data !== "string") noteSpentBytes(data.length);
    return this.#socket.write(data);
  }

  /**
   * Queues several pieces as one write: the socket is corked while they are added, so a reply's
   * status line, body and terminator leave in one system call (and reach the client as one segment
   * where they fit) instead of one each. Text alone is joined and written once. Returns false under
   * backpressure, as `write` does.
   */
  writeParts(parts: readonly (string | Uint8Array)[]): boolean {
    if (this.#closed) return false;
    if (parts.length === 1) return this.write(parts[0]!);
    if (parts.every((part) => typeof part === "string")) return this.write(parts.join(""));
    const socket = this.#socket;
    socket.cork();
    let ok = true;
    let octets = 0;
    for (const part of parts) {
      if (typeof part !== "string") octets += part.length;
      ok = socket.write(part);
    }
    socket.uncork();
    noteSpentBytes(octets);
    return ok || socket.writableLength === 0;
  }

  /** Resolves when queued bytes went out (or the connection closed). */
  drained(): Promise<void> {
    if (this.#closed || this.#socket.writableLength === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.#socket.off("drain", done);
        this.#socket.off("close", done);
        resolve();
      };
      this.#socket.once("drain", done);
      this.#socket.once("close", done);
    });
  }

  /** Stops reading from the peer (while a slow store write is under way). */
  pause(): void {
    this.#socket.pause();
    this.#lineDeadline.pause();
  }

  resume(): void {
    if (this.#upgrading) return;
    this.#socket.resume();
    this.#lineDeadline.resume();
  }

  /** Ends the session after `ms` without traffic; 0 turns it off. */
  setIdleTimeout(ms: number): void {
    this.#idleMs = ms;
    this.#socket.setTimeout(ms);
  }

  /**
   * A line the peer has begun must end (LF) within `ms`, however it trickles in; the session then
   * hears `timeout`, as for the idle timeout. 0 turns it off, for input that is not made of lines.
   */
  setLineTimeout(ms: number): void {
    this.#lineDeadline.set(ms);
  }

  /**
   * Turns the plain connection into a TLS server connection (STARTTLS, STLS). The caller must already
   * have written its "go ahead" reply and must throw away any bytes it received after the command:
   * they were sent in the clear and could be an injection (CVE-2011-0411 family).
   */
  async upgradeToTls(context: TlsContext, handshakeTimeoutMs = 30_000): Promise<void> {
    if (this.#tls) throw new Error("connection is already secure");
    const raw = this.#socket;
    this.#upgrading = true;
    raw.pause();
    // From here on no plaintext byte may reach the session. Some runtimes (Deno) still deliver data
    // on a paused socket: keep what arrives (the client's ClientHello) and hand it back to the socket
    // for TLS to read, instead of letting the session take it as a command.
    this.#detach(raw);
    const early: Buffer[] = [];
    const keep = (chunk: Buffer): void => void early.push(chunk);
    raw.on("data", keep);
    raw.on("error", this.#onError);
    raw.on("close", this.#onClose);
    // Let the go-ahead reply leave in the clear before the socket is handed to TLS.
    await new Promise<void>((resolve) => raw.write("", () => resolve()));
    raw.off("data", keep);
    raw.off("error", this.#onError);
    raw.off("close", this.#onClose);
    if (early.length > 0) raw.unshift(Buffer.concat(early));
    const secure = new TLSSocket(raw, { isServer: true, secureContext: context.current });
    this.#socket = secure;
    if (this.#idleMs > 0) secure.setTimeout(this.#idleMs);
    this.#held = [];
    this.#attach(secure);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("TLS handshake timed out")), handshakeTimeoutMs);
        secure.once("secure", () => {
          clearTimeout(timer);
          resolve();
        });
        secure.once("error", (error) => {
          clearTimeout(timer);
          reject(error);
        });
        secure.once("close", () => {
          clearTimeout(timer);
          reject(new Error("connection closed during TLS handshake"));
        });
      });
    } catch (error) {
      this.#held = null;
      this.destroy();
      throw error;
    } finally {
      this.#upgrading = false;
    }
    this.#tls = tlsInfo(secure);
    // Hand over held bytes only after the caller's `await` went on, so it is ready to read them.
    setTimeout(() => this.#releaseHeld(), 0);
    secure.resume();
  }

  #releaseHeld(): void {
    const held = this.#held;
    this.#held = null;
    if (held && !this.#closed) for (const chunk of held) this.#events?.data(chunk);
    if (this.#endAfterHeld) {
      this.#endAfterHeld = false;
      this.#onEnd();
    }
  }

  /** Sends the last bytes, then closes. The connection is destroyed if the peer does not read them. */
  end(data?: string | Uint8Array): void {
    if (this.#closed) return;
    const socket = this.#socket;
    if (data !== undefined) socket.end(data);
    else socket.end();
    // A client that never reads must not keep the socket (and its buffers) forever.
    setTimeout(() => socket.destroy(), 10_000).unref();
  }

  /** Closes at once, dropping anything unsent. */
  destroy(): void {
    this.#socket.destroy();
  }

  #attach(socket: Socket): void {
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("timeout", this.#onTimeout);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
  }

  #detach(socket: Socket): void {
    socket.off("data", this.#onData);
    socket.off("end", this.#onEnd);
    socket.off("timeout", this.#onTimeout);
    socket.off("error", this.#onError);
    socket.off("close", this.#onClose);
  }

  // The listeners allow half-open sockets, so nothing ends our side but `end()` and `destroy()`.
  #onEnd = (): void => {
    if (this.#closed) return;
    if (this.#held) {
      this.#endAfterHeld = true;
      return;
    }
    if (this.#events?.inputEnd) this.#events.inputEnd();
    else this.end();
  };

  #onData = (chunk: Buffer): void => {
    noteSpentBytes(chunk.length);
    this.#lineDeadline.observe(chunk);
    if (this.#held) this.#held.push(chunk);
    else this.#events?.data(chunk);
  };

  #onTimeout = (): void => this.#timedOut("idle");

  #timedOut(reason: "idle" | "line"): void {
    if (this.#events?.timeout) this.#events.timeout(reason);
    else this.destroy();
  }

  // Errors (ECONNRESET, TLS alerts) always end in "close"; the session learns of them there.
  #onError = (): void => {};

  #onClose = (): void => {
    if (this.#closed) return;
    // Bytes that arrived just before the close still belong to the session.
    if (this.#tls && this.#held) this.#releaseHeld();
    this.#closed = true;
    this.#lineDeadline.stop();
    this.#events?.close();
  };
}

function tlsInfo(socket: TLSSocket): TlsInfo {
  const cipher = socket.getCipher();
  return { protocol: socket.getProtocol() ?? "TLS", cipher: cipher?.standardName ?? cipher?.name ?? "unknown" };
}

/** `::ffff:127.0.0.1` → `127.0.0.1`, so limits and logs see one form per client. */
/** An IPv4 client on a dual-stack socket is counted and logged by its IPv4 address. */
export function normaliseAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}
