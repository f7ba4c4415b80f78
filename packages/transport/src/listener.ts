import { createServer as createNetServer, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { Connection } from "./connection.js";
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

/** Opens a listening socket, or rejects with an error that names the address (e.g. port in use). */
export async function listen(options: ListenOptions): Promise<Listener> {
  const maxConnections = options.maxConnections ?? 10_000;
  const maxPerAddress = options.maxConnectionsPerAddress ?? 100;
  const open = new Set<Connection>();
  const perAddress = new Map<string, number>();

  const accept = (socket: Socket): void => {
    const connection = new Connection(socket);
    const address = connection.remoteAddress;
    const fromAddress = (perAddress.get(address) ?? 0) + 1;
    let reason: RejectReason | null = null;
    if (open.size >= maxConnections) reason = "capacity";
    else if (fromAddress > maxPerAddress) reason = "per-address";
    if (reason) {
      if (options.onRejected) options.onRejected(connection, reason);
      else connection.destroy();
      return;
    }
    open.add(connection);
    perAddress.set(address, fromAddress);
    socket.once("close", () => {
      open.delete(connection);
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left <= 0) perAddress.delete(address);
      else perAddress.set(address, left);
    });
    options.onConnection(connection);
  };

  let server: Server;
  if (options.implicitTls) {
    const context = options.tls;
    if (!context) throw new Error(`listener ${options.host}:${options.port}: implicit TLS needs a certificate`);
    const tlsServer = createTlsServer({
      ...context.serverOptions,
      // See below: the session ends the connection once it answered everything.
      allowHalfOpen: true,
      handshakeTimeout: options.handshakeTimeoutMs ?? 30_000,
    });
    context.onReload(() => tlsServer.setSecureContext(context.serverOptions));
    tlsServer.on("secureConnection", accept);
    // Failed handshakes (scanners, wrong protocol) are routine on a public port.
    tlsServer.on("tlsClientError", (_error, socket) => socket.destroy());
    server = tlsServer;
  } else {
    // A client may send its whole conversation and shut down its sending side at once (a script,
    // `nc -N`); Postfix and Dovecot still answer every command. Half-open sockets let the session do
    // the same and end the connection itself (Connection's `inputEnd`).
    server = createNetServer({ allowHalfOpen: true }, accept);
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
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
