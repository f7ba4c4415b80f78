import { createServer as createNetServer, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { Connection, normaliseAddress } from "./connection.js";
import type { TlsContext } from "./tls-context.js";

export type RejectReason = "capacity" | "per-address";

export interface ListenOptions {
  readonly host: string;
  /** 0 picks a free port; read it back from `Listener.port`. */
  readonly port: number;
  /** Needed for implicit TLS, and for STARTTLS/STLS (which the protocol does on the connection). */
  readonly tls?: TlsContext;
  /** TLS from the first byte (465, 995). */
  readonly implicitTls?: boolean;
  /** Connections open at once on this listener; more are refused. Default 10,000. */
  readonly maxConnections?: number;
  /** Connections open at once from one client address. Default 100 (loopback is not exempt). */
  readonly maxConnectionsPerAddress?: number;
  /** Implicit TLS handshakes that take longer are dropped. Default 30 s. */
  readonly handshakeTimeoutMs?: number;
  readonly onConnection: (connection: Connection) => void;
  /**
   * A connection over a limit. The protocol may write its refusal (SMTP 421, POP3 -ERR) and must end
   * it. Default: closed without a word.
   */
  readonly onRejected?: (connection: Connection, reason: RejectReason) => void;
  /**
   * A connection over a limit on an implicit-TLS listener: it is closed before its handshake, with no
   * channel for a refusal yet, so this only tells (for the log).
   */
  readonly onDropped?: (remoteAddress: string, reason: RejectReason) => void;
}

export interface Listener {
  readonly host: string;
  readonly port: number;
  readonly implicitTls: boolean;
  /** Connections open now. */
  readonly size: number;
  /** Every open connection (for shutdown). */
  connections(): IterableIterator<Connection>;
  /** Stops accepting; open connections stay until their sessions end them. */
  close(): Promise<void>;
}

const socketKey = (socket: Socket): string => `${socket.remoteAddress ?? ""}|${socket.remotePort ?? 0}`;

/** Opens a listening socket, or rejects with an error that names the address (e.g. port in use). */
export async function listen(options: ListenOptions): Promise<Listener> {
  const maxConnections = options.maxConnections ?? 10_000;
  const maxPerAddress = options.maxConnectionsPerAddress ?? 100;
  const open = new Set<Connection>();
  // Counted per socket from the moment it is accepted, so that an implicit-TLS port holds no more
  // sockets in their handshake than its limits allow either (otherwise one address could open
  // thousands and run the process out of descriptors before a single one is counted).
  let held = 0;
  const perAddress = new Map<string, number>();
  /**
   * Sockets of an implicit-TLS port still in their handshake, by remote address and port (the TLS
   * socket shows the same pair as the one it wraps): closing the listener drops them.
   */
  const handshaking = new Map<string, Socket>();

  const admit = (socket: Socket): RejectReason | null => {
    const address = normaliseAddress(socket.remoteAddress ?? "");
    const fromAddress = (perAddress.get(address) ?? 0) + 1;
    if (held >= maxConnections) return "capacity";
    if (fromAddress > maxPerAddress) return "per-address";
    held++;
    perAddress.set(address, fromAddress);
    socket.once("close", () => {
      held--;
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left <= 0) perAddress.delete(address);
      else perAddress.set(address, left);
    });
    return null;
  };

  const start = (connection: Connection, socket: Socket): void => {
    open.add(connection);
    socket.once("close", () => open.delete(connection));
    options.onConnection(connection);
  };

  let server: Server;
  if (options.implicitTls) {
    const context = options.tls;
    if (!context) throw new Error(`listener ${options.host}:${options.port}: implicit TLS needs a certificate`);
    const handshakeMs = options.handshakeTimeoutMs ?? 30_000;
    const tlsServer = createTlsServer({
      ...context.serverOptions,
      // See below: the session ends the connection once it answered everything.
      allowHalfOpen: true,
      handshakeTimeout: handshakeMs,
    });
    context.onReload(() => tlsServer.setSecureContext(context.serverOptions));
    tlsServer.on("connection", (raw: Socket) => {
      // Before the handshake there is no channel to say why: over a limit is closed without a word.
      const reason = admit(raw);
      if (reason !== null) {
        raw.destroy();
        options.onDropped?.(normaliseAddress(raw.remoteAddress ?? ""), reason);
        return;
      }
      const key = socketKey(raw);
      handshaking.set(key, raw);
      // Our own deadline besides the TLS server's: a runtime that ignores `handshakeTimeout` would
      // otherwise hold a silent socket for ever.
      const timer = setTimeout(() => {
        if (handshaking.get(key) === raw) raw.destroy();
      }, handshakeMs + 1_000);
      timer.unref?.();
      raw.once("close", () => {
        clearTimeout(timer);
        if (handshaking.get(key) === raw) handshaking.delete(key);
      });
    });
    tlsServer.on("secureConnection", (socket: Socket) => {
      handshaking.delete(socketKey(socket));
      start(new Connection(socket), socket);
    });
    // Failed handshakes (scanners, wrong protocol) are routine on a public port.
    tlsServer.on("tlsClientError", (_error, socket) => socket.destroy());
    server = tlsServer;
  } else {
    // A client may send its whole conversation and shut down its sending side at once (a script,
    // `nc -N`); Postfix and Dovecot still answer every command. Half-open sockets let the session do
    // the same and end the connection itself (Connection's `inputEnd`).
    server = createNetServer({ allowHalfOpen: true }, (socket) => {
      const connection = new Connection(socket);
      const reason = admit(socket);
      if (reason === null) start(connection, socket);
      else if (options.onRejected) options.onRejected(connection, reason);
      else connection.destroy();
    });
  }
  server.on("error", () => {});

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      const why =
        error.code === "EADDRINUSE"
          ? "address already in use"
          : error.code === "EACCES"
            ? "permission denied (ports below 1024 need privileges)"
            : error.code === "EADDRNOTAVAIL"
              ? "address not available on this machine"
              : error.message;
      reject(new Error(`cannot listen on ${options.host}:${options.port}: ${why}`, { cause: error }));
    };
    server.once("error", onError);
    server.listen({ host: options.host, port: options.port, backlog: 1024 }, () => {
      server.off("error", onError);
      resolve();
    });
  });

  const bound = server.address();
  const port = typeof bound === "object" && bound ? bound.port : options.port;
  return {
    host: options.host,
    port,
    implicitTls: options.implicitTls ?? false,
    get size() {
      return open.size;
    },
    connections: () => open.values(),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A socket still in its handshake belongs to no session that could end it.
        for (const raw of handshaking.values()) raw.destroy();
      }),
  };
}
