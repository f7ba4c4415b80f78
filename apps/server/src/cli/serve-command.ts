/**
 * `mailroom serve`: starts the server and keeps it running until SIGTERM or SIGINT. SIGHUP reloads
 * the certificate.
 */
import type { ServerConfig } from "../config.js";
import { createLogger, type AppLogger } from "../logger.js";
import { currentRole, isClusterPrimary, onPrimaryGone, reportReady, runPrimary } from "../cluster.js";
import { startServer, type RunningServer } from "../serve.js";

function developmentHint(server: RunningServer): string {
  const at = (name: string): string => server.listeners.find((l) => l.name === name)?.address ?? "(off)";
  return [
    "",
    "Mailroom is running in the development setup (no --config): mail is kept in ./data.",
    "  1. Add a user:        ./dev mailroom user add you@localhost",
    `  2. Send mail to it:   SMTP ${at("smtp")}  (submission with AUTH: ${at("submission")}, STARTTLS; ${at("submissions")}, TLS)`,
    `  3. Read it:           POP3 ${at("pop3")} (STLS) or POP3S ${at("pop3s")}, login you@localhost`,
    "     The certificate is self-signed (./data/.tls/cert.pem): tell the client to accept it.",
    "  4. Check it all:      ./dev mailroom doctor --user you@localhost",
    "Stop with Ctrl-C.",
    "",
  ].join("\n");
}

/**
 * Node opens its inspector on SIGUSR1 unless the program handles that signal: whoever may signal the
 * process (its own user, root) would get an unauthenticated debugger on 127.0.0.1:9229, and with it
 * code running as the server, for any local user who connects first. Dovecot's log rotation sends
 * USR1 to its processes, so an operator may well do it here; it is only logged.
 */
function ignoreDebugSignal(logger: AppLogger): void {
  try {
    process.on("SIGUSR1", () => logger.info({}, "SIGUSR1 ignored: the log goes to stdout, there is nothing to reopen"));
  } catch {
    // No SIGUSR1 on this platform.
  }
}

export async function runServe(config: ServerConfig): Promise<number> {
  const base = createLogger(config.log.level);
  ignoreDebugSignal(base);
  if (isClusterPrimary(config)) return runPrimary(config, base);
  const role = currentRole(config);
  const logger = role.index === null ? base : base.child({ worker: role.index, pid: process.pid });
  // Until the server is up, a SIGHUP (a certificate renewal's reload landing during a start) has
  // nothing to reload: the start reads the current files. Without a handler it would kill the process.
  const early = (): void => logger.info({}, "SIGHUP while starting: the certificate is read at start");
  onSighup(early);
  const server = await startServer(config, logger, role);
  if (config.development) process.stderr.write(developmentHint(server));
  if (role.index !== null) reportReady(server.listeners.map((l) => ({ listener: l.name, address: l.address })));

  return new Promise<number>((resolve) => {
    // A bug in one session must not take every other session down with it; log it and carry on.
    process.on("unhandledRejection", (reason: unknown) => {
      logger.error({ err: reason instanceof Error ? reason.stack ?? reason.message : String(reason) }, "unhandled rejection");
    });
    process.on("uncaughtException", (error: Error) => {
      // State may be corrupt after a synchronous throw nobody caught: stop as cleanly as possible.
      logger.error({ err: error.stack ?? error.message }, "uncaught exception; stopping");
      crashed = true;
      stop("uncaughtException");
    });
    let crashed = false;
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) {
        // A second Ctrl-C means "now".
        logger.warn({ signal }, "second signal: exiting without waiting");
        logger.flush();
        resolve(1);
        return;
      }
      stopping = true;
      logger.info({ signal }, "signal received, stopping");
      // If something hangs past the deadline, do not hang with it.
      const grace = (config.limits.shutdownTimeoutSeconds + 5) * 1000;
      const force = setTimeout(() => {
        logger.error({ graceMs: grace }, "shutdown took too long; exiting");
        logger.flush();
        resolve(1);
      }, grace);
      server.stop().then(
        () => {
          clearTimeout(force);
          logger.flush();
          resolve(crashed ? 1 : 0);
        },
        (error: unknown) => {
          clearTimeout(force);
          logger.error({ err: String(error) }, "error while stopping");
          logger.flush();
          resolve(1);
        },
      );
    };
    if (role.index === null) {
      process.on("SIGTERM", () => stop("SIGTERM"));
      process.on("SIGINT", () => stop("SIGINT"));
    } else {
      // A worker stops when the primary says so, and only the primary escalates (it kills a worker
      // that overstays). A second SIGTERM is not "now" here: `systemctl stop` signals every process of
      // the unit and the primary sends its own, and counting both would drop every session unanswered.
      process.on("SIGTERM", () => {
        if (!stopping) stop("SIGTERM");
      });
      // Ctrl-C reaches the whole process group; the primary turns it into one SIGTERM per worker.
      process.on("SIGINT", () => undefined);
      // The primary is gone (killed): finish what is running and stop, rather than serve unsupervised.
      onPrimaryGone(() => {
        if (!stopping) stop("primary gone");
      });
    }
    const reload = (): void => {
      server.reloadTls().then(
        () => logger.info({}, "TLS certificate reloaded"),
        (error: unknown) =>
          logger.error({ err: (error instanceof Error ? error.message : String(error)).split("\n")[0] }, "TLS reload failed; keeping the old certificate"),
      );
    };
    process.removeListener("SIGHUP", early);
    onSighup(reload);
  });
}

function onSighup(handler: () => void): void {
  try {
    process.on("SIGHUP", handler);
  } catch {
    // Not every platform has SIGHUP (Windows); reloading then needs a restart.
  }
}
