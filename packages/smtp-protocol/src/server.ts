import { createLoginCache, createLoginThrottle, silentLogger } from "@mailroom/store";
import { listen, type Listener } from "@mailroom/transport";
import { PostmasterLookup } from "./policy.js";
import { formatReply, R } from "./replies.js";
import { Session, type ServerContext } from "./session.js";
import { resolveLimits, type SmtpListenOptions, type SmtpServer, type SmtpServerOptions } from "./types.js";

/**
 * An SMTP server over a Mailroom store. One server may have several listeners (port 25 as "mx",
 * 587 and 465 as "submission"); they share the store, limits and hooks.
 */
export function createSmtpServer(options: SmtpServerOptions): SmtpServer {
  if (!options.hostname || /[\s\x00-\x1f]/.test(options.hostname)) throw new Error("smtp: hostname must be a host name");
  const limits = resolveLimits(options.limits);
  const ctx: ServerContext = {
    store: options.store,
    hostname: options.hostname,
    tls: options.tls,
    logger: options.logger ?? silentLogger,
    // Without a shared one, AUTH still gets its own: password guessing is never free.
    throttle: options.loginThrottle ?? createLoginThrottle(),
    loginCache: options.loginCache ?? createLoginCache(),
    allowLoopbackPlaintextAuth: options.allowLoopbackPlaintextAuth ?? false,
    bareLineEndings: options.bareLineEndings ?? "reject",
    limits,
    hooks: options.hooks ?? {},
    relay: options.relay ?? "refuse",
    postmaster: new PostmasterLookup(options.store.directory, options.hostname),
  };
  const listeners = new Set<Listener>();
  const sessions = new Set<Session>();
  let closing = false;
  let closed: Promise<void> | null = null;
  let allClosed: (() => void) | null = null;

  const closedSession = (session: Session): void => {
    sessions.delete(session);
    if (sessions.size === 0) allClosed?.();
  };

  return {
    get sessionCount() {
      return sessions.size;
    },

    async listen(listenOptions: SmtpListenOptions): Promise<Listener> {
      if (closing) throw new Error("smtp: server is closed");
      if (listenOptions.implicitTls && !options.tls) {
        throw new Error(`smtp: listener ${listenOptions.host}:${listenOptions.port} uses implicit TLS but no tls context was given`);
      }
      const listener = await listen({
        host: listenOptions.host,
        port: listenOptions.port,
        ...(options.tls ? { tls: options.tls } : {}),
        implicitTls: listenOptions.implicitTls ?? false,
        maxConnections: limits.maxConnections,
        maxConnectionsPerAddress: limits.maxConnectionsPerAddress,
        onConnection: (connection) => {
          if (closing) {
            connection.end(formatReply(R.shuttingDown(ctx.hostname)));
            return;
          }
          const session = new Session(ctx, connection, listenOptions.mode, closedSession);
          sessions.add(session);
          void session.start();
        },
        onRejected: (connection, reason) => {
          ctx.logger.info({ remote: connection.remoteAddress, reason }, "connection refused");
          connection.end(formatReply(R.tooManyConnections(ctx.hostname)));
        },
        onDropped: (remote, reason) => ctx.logger.info({ remote, reason }, "connection refused"),
      });
      listeners.add(listener);
      ctx.logger.info({ host: listener.host, port: listener.port, mode: listenOptions.mode, implicitTls: listener.implicitTls }, "smtp listening");
      return listener;
    },

    close(closeOptions = {}): Promise<void> {
      // A second call waits for the first shutdown instead of starting another.
      closed ??= shutdown(closeOptions.deadlineMs ?? 30_000);
      return closed;
    },
  };

  async function shutdown(deadlineMs: number): Promise<void> {
    closing = true;
    // net.Server#close only calls back once every connection is gone, so wait for it last.
    const stopped = Promise.all([...listeners].map((l) => l.close()));
    listeners.clear();
    if (sessions.size === 0) {
      await stopped;
      return;
    }
    const done = new Promise<void>((resolve) => {
      allClosed = resolve;
    });
    for (const session of sessions) session.shutdown();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        for (const session of sessions) session.destroy();
        resolve();
      }, deadlineMs);
    });
    await Promise.race([done, deadline]);
    clearTimeout(timer);
    if (sessions.size > 0) await done;
    await stopped;
  }
}
