import { createLoginCache, createLoginThrottle, silentLogger } from "@mailroom/store";
import { listen, type Connection, type Listener } from "@mailroom/transport";
import type { Pop3ServerOptions } from "./options.js";
import { err } from "./replies.js";
import type { SessionContext } from "./context.js";
import { Session } from "./session.js";

export interface Pop3ListenOptions {
  readonly host: string;
  /** 0 picks a free port; read it back from the returned listener. */
  readonly port: number;
  /** TLS from the first byte (POP3S, port 995). Needs `tls` in the server options. */
  readonly implicitTls?: boolean;
}

export interface Pop3Server {
  listen(options: Pop3ListenOptions): Promise<Listener>;
  /**
   * Stops accepting. Sessions in AUTHORIZATION get "-ERR [SYS/TEMP] server shutting down"; sessions in
   * TRANSACTION may finish with QUIT until the deadline (default 30 s), then are told -ERR and dropped
   * without deleting anything. Resolves when every session ended and every lease was released.
   */
  close(options?: { deadlineMs?: number }): Promise<void>;
  /** Sessions open now. */
  readonly sessionCount: number;
}

const isLoopback = (address: string): boolean => address === "::1" || address.startsWith("127.");

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`createPop3Server: ${name} must be a number >= 0`);
  return value;
}

export function createPop3Server(options: Pop3ServerOptions): Pop3Server {
  // It goes into the greeting and QUIT lines verbatim.
  if (!/^[\x21-\x7e]{1,253}$/.test(options.hostname)) throw new RangeError("createPop3Server: invalid hostname");
  const expireDays = options.expireDays ?? null;
  if (expireDays !== null && !(Number.isInteger(expireDays) && expireDays >= 0)) {
    throw new RangeError("createPop3Server: expireDays must be a whole number >= 0, or null for NEVER");
  }
  const context: SessionContext = {
    store: options.store,
    hostname: options.hostname,
    tls: options.tls,
    logger: options.logger ?? silentLogger,
    throttle: options.loginThrottle ?? createLoginThrottle(),
    loginCache: options.loginCache ?? createLoginCache(),
    allowPlaintextAuth: options.allowPlaintextAuth ?? false,
    expireDays,
    loginDelaySeconds: Math.floor(nonNegative("loginDelaySeconds", options.loginDelaySeconds, 0)),
    idleTimeoutMs: nonNegative("idleTimeoutMs", options.idleTimeoutMs, 600_000),
    loginTimeoutMs: nonNegative("loginTimeoutMs", options.loginTimeoutMs, 180_000),
    leaseTtlMs: nonNegative("leaseTtlMs", options.leaseTtlMs, 60_000) || 60_000,
    maxBadCommands: Math.max(1, nonNegative("maxBadCommands", options.maxBadCommands, 10)),
    isLocalAddress: options.isLocalAddress ?? isLoopback,
    lastLogin: new Map(),
  };
  const listeners = new Set<Listener>();
  const sessions = new Set<Session>();
  let closing: Promise<void> | null = null;

  const accept = (connection: Connection): void => {
    if (closing) {
      connection.end(err("server shutting down", "SYS/TEMP"));
      return;
    }
    const session = new Session(connection, context);
    sessions.add(session);
    void session.closed.then(() => sessions.delete(session));
    session.start();
  };

  const shutdown = async (deadlineMs: number): Promise<void> => {
    const stopped = [...listeners].map((listener) => listener.close());
    for (const session of sessions) session.shutdown();
    const timer = setTimeout(() => {
      for (const session of sessions) session.forceClose();
    }, deadlineMs);
    try {
      await Promise.all([...sessions].map((session) => session.closed));
    } finally {
      clearTimeout(timer);
    }
    await Promise.all(stopped);
  };

  return {
    async listen(listenOptions) {
      if (closing) throw new Error("POP3 server is closed");
      if (listenOptions.implicitTls && !options.tls) {
        throw new Error(`POP3 listener ${listenOptions.host}:${listenOptions.port}: implicit TLS needs the tls option`);
      }
      const listener = await listen({
        host: listenOptions.host,
        port: listenOptions.port,
        implicitTls: listenOptions.implicitTls ?? false,
        ...(options.tls ? { tls: options.tls } : {}),
        ...(options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : {}),
        ...(options.maxConnectionsPerAddress !== undefined
          ? { maxConnectionsPerAddress: options.maxConnectionsPerAddress }
          : {}),
        onConnection: accept,
        onRejected: (connection, reason) => {
          context.logger.warn({ remote: connection.remoteAddress, reason }, "connection refused");
          connection.end(err("too many connections, try again later", "SYS/TEMP"));
        },
        onDropped: (remote, reason) => context.logger.warn({ remote, reason }, "connection refused"),
      });
      listeners.add(listener);
      context.logger.info({ host: listener.host, port: listener.port, implicitTls: listener.implicitTls }, "POP3 listening");
      return listener;
    },
    close(closeOptions = {}) {
      closing ??= shutdown(closeOptions.deadlineMs ?? 30_000);
      return closing;
    },
    get sessionCount() {
      return sessions.size;
    },
  };
}
