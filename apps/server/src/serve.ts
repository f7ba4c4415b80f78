/**
 * Wires one server process together: store, certificate, SMTP (mx + submission) and POP3 listeners,
 * the outbound delivery worker, the metrics/health endpoint, the retention job, and an orderly stop.
 */
import { hostname as osHostname } from "node:os";
import { authenticate, createLoginCache, createLoginThrottle, type Logger, type Store } from "@mailroom/store";
import { createPop3Server, runExpire } from "@mailroom/pop3-protocol";
import { createSmtpServer } from "@mailroom/smtp-protocol";
import { createOutbound, type Outbound } from "@mailroom/outbound";
import { runtimeName, type Listener, type RuntimeName } from "@mailroom/transport";
import { formatAddress, type ListenAddress, type ServerConfig } from "./config.js";
import { ConfigError } from "./errors.js";
import { outboundOptions } from "./outbound-options.js";
import { clusterThrottle, SINGLE_PROCESS, serveClusterRequests, share, type Role } from "./cluster.js";
import { createMetrics, localSource, startMetricsServer, storeHealth, type HttpEndpoint } from "./metrics.js";
import { openStore } from "./registry.js";
import { ensureDevelopmentDomain } from "./development.js";
import { contextFrom, readMaterial, reloadContext, tlsFiles, type TlsFiles } from "./tls.js";

/**
 * Things a runtime is known to do differently, each said once at start-up, so that a known gap is
 * reported instead of surprising someone in the middle of a session.
 */
export function runtimeLimitations(runtime: RuntimeName): readonly string[] {
  switch (runtime) {
    case "node":
    case "bun":
      return [];
    case "deno":
      return [
        "outbound: Deno cannot tell a missing domain from a failing DNS server, so mail to a domain that does not exist is retried until the retry schedule ends instead of bounced at once",
      ];
  }
}

export interface ListenerInfo {
  /** smtp, submission, submissions, pop3, pop3s or metrics. */
  readonly name: string;
  /** The config key it comes from. */
  readonly key: string;
  /** The actual address (with the port the system picked for port 0). */
  readonly address: string;
}

export interface RunningServer {
  readonly store: Store;
  /** The delivery worker, when `[outbound]` is enabled. */
  readonly outbound: Outbound | null;
  readonly listeners: readonly ListenerInfo[];
  /** Re-reads the certificate and key; keeps the old ones and throws if the new ones are bad. */
  reloadTls(): Promise<void>;
  /** Stops accepting, lets sessions finish within the deadline, releases leases, closes the store. */
  stop(): Promise<void>;
}

const HOUR_MS = 3_600_000;

/**
 * `role` says which share of the server this process is: the whole of it (the default), or one
 * worker of a cluster (see cluster.ts), which takes its part of the connection limits, runs the
 * outbound worker and EXPIRE only as worker 0, and leaves the metrics endpoint to the primary.
 */
export async function startServer(config: ServerConfig, logger: Logger, role: Role = SINGLE_PROCESS): Promise<RunningServer> {
  const runtime = runtimeName();
  for (const limitation of runtimeLimitations(runtime)) logger.warn({ runtime }, limitation);

  // Certificate problems are found before the store is touched.
  const files: TlsFiles | null = await tlsFiles(config);
  const tls = files ? contextFrom(await readMaterial(files), files) : undefined;
  if (!tls) logger.warn({}, "no [tls] configured: STARTTLS and STLS are off, and AUTH works only where plaintext is allowed");

  const { store: rawStore, adapter } = await openStore(config);
  const store = rawStore;
  const cleanups: Array<() => Promise<void>> = [() => store.close()];
  const undo = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    logger.info({ store: adapter.name, runtime }, "store opened");
    await ensureDevelopmentDomain(store, config, logger);

    // A third-party adapter written before the queue existed may not have one.
    const hasQueue = (rawStore as { queue?: unknown }).queue !== undefined;
    const outboundEnabled = config.outbound.enabled ?? hasQueue;
    if (outboundEnabled && !hasQueue) {
      throw new ConfigError(`${config.where("outbound.enabled")}: the ${adapter.name} store has no outbound queue (set outbound.enabled = false)`);
    }
    // Submission queues mail in every worker; only worker 0 delivers it.
    const runOutbound = outboundEnabled && role.runsJobs;
    const maxConnections = share(config.limits.maxConnections, role);
    const maxConnectionsPerAddress = share(config.limits.maxConnectionsPerAddress, role);
    const metrics = config.metrics.listen ? createMetrics({ store: rawStore, queueEnabled: hasQueue }) : null;
    // Everything below works on the timed store, so the latency histogram sees every protocol's calls.
    const working = metrics ? metrics.timed(rawStore) : rawStore;

    // In a cluster every worker's throttle hears of every worker's failed logins.
    const loginThrottle = role.index === null ? createLoginThrottle() : clusterThrottle(createLoginThrottle());
    // One for both protocols: a client that sends with SMTP AUTH and fetches with POP3 pays one scrypt.
    const loginCache = createLoginCache({ ttlMs: config.auth.cacheSeconds * 1000 });
    const smtpLogger = logger.child({ protocol: "smtp" });
    const pop3Logger = logger.child({ protocol: "pop3" });
    const smtp = createSmtpServer({
      store: working,
      hostname: config.hostname,
      ...(tls ? { tls } : {}),
      logger: metrics ? metrics.sessionLogger("smtp", smtpLogger) : smtpLogger,
      loginThrottle: metrics ? metrics.throttle("smtp", loginThrottle) : loginThrottle,
      loginCache,
      relay: outboundEnabled ? "queue" : "refuse",
      allowLoopbackPlaintextAuth: config.smtp.allowLoopbackPlaintextAuth,
      bareLineEndings: config.smtp.bareLineEndings,
      limits: {
        maxMessageBytes: config.smtp.maxMessageSize,
        maxRecipients: config.smtp.maxRecipients,
        maxConnections,
        maxConnectionsPerAddress,
        timeouts: { session: config.smtp.maxSessionSeconds * 1000 },
      },
    });
    const pop3 = createPop3Server({
      store: metrics ? metrics.countingRetrievals(working) : working,
      hostname: config.hostname,
      ...(tls ? { tls } : {}),
      logger: metrics ? metrics.sessionLogger("pop3", pop3Logger) : pop3Logger,
      loginThrottle: metrics ? metrics.throttle("pop3", loginThrottle) : loginThrottle,
      loginCache,
      allowPlaintextAuth: config.pop3.allowPlaintextAuth,
      expireDays: config.pop3.expireDays,
      loginDelaySeconds: config.pop3.loginDelaySeconds,
      idleTimeoutMs: config.pop3.idleTimeoutSeconds * 1000,
      loginTimeoutMs: config.pop3.loginTimeoutSeconds * 1000,
      leaseTtlMs: config.pop3.leaseTtlSeconds * 1000,
      maxConnections,
      maxConnectionsPerAddress,
    });
    const deadlineMs = config.limits.shutdownTimeoutSeconds * 1000;
    cleanups.push(
      () => smtp.close({ deadlineMs: 0 }),
      () => pop3.close({ deadlineMs: 0 }),
    );

    // An unknown user's login is checked against a dummy hash, which is made on first use: the first
    // unknown login of a process would take twice as long as any other and give away that the name does
    // not exist. One made-up login here (it touches no store: the name is not an address) makes it now.
    await authenticate(rawStore.directory, "", "no password at all");

    const listeners: ListenerInfo[] = [];
    const open = async (
      name: string,
      key: string,
      addresses: readonly ListenAddress[],
      start: (address: ListenAddress) => Promise<Listener>,
    ): Promise<void> => {
      for (const address of addresses) {
        let listener: Listener;
        try {
          listener = await start(address);
        } catch (error) {
          const why = error instanceof Error ? error.message : String(error);
          throw new Error(`${config.where(key)}: ${why}`, { cause: error });
        }
        const info = { name, key, address: formatAddress(listener) };
        listeners.push(info);
        logger.info({ listener: name, address: info.address }, "listening");
      }
    };
    const needTls = (key: string): void => {
      if (!tls) throw new Error(`${config.where(key)}: implicit TLS needs a certificate ([tls] cert and key)`);
    };
    await open("smtp", "smtp.listen", config.smtp.listen, (a) => smtp.listen({ ...a, mode: "mx" }));
    await open("submission", "smtp.submission", config.smtp.submission, (a) => smtp.listen({ ...a, mode: "submission" }));
    if (config.smtp.submissions.length > 0) needTls("smtp.submissions");
    await open("submissions", "smtp.submissions", config.smtp.submissions, (a) =>
      smtp.listen({ ...a, mode: "submission", implicitTls: true }),
    );
    await open("pop3", "pop3.listen", config.pop3.listen, (a) => pop3.listen(a));
    if (config.pop3.pop3s.length > 0) needTls("pop3.pop3s");
    await open("pop3s", "pop3.pop3s", config.pop3.pop3s, (a) => pop3.listen({ ...a, implicitTls: true }));

    let http: HttpEndpoint | null = null;
    if (role.index !== null) {
      // A worker: the primary serves the endpoint and asks each worker for its metrics and health.
      serveClusterRequests(metrics ? metrics.registry : null, () => storeHealth(rawStore));
    } else if (metrics && config.metrics.listen) {
      try {
        http = await startMetricsServer(config.metrics.listen, localSource(metrics, rawStore));
      } catch (error) {
        const why = error instanceof Error ? error.message : String(error);
        throw new Error(`${config.where("metrics.listen")}: ${why}`, { cause: error });
      }
      const endpoint = http;
      cleanups.push(() => endpoint.close());
      listeners.push({ name: "metrics", key: "metrics.listen", address: http.address });
      logger.info({ listener: "metrics", address: http.address }, "listening");
    }

    let outbound: Outbound | null = null;
    if (runOutbound) {
      outbound = createOutbound(outboundOptions(config, working, metrics ? metrics.outboundLogger(logger) : logger));
      const worker = outbound;
      cleanups.push(() => worker.stop({ deadlineMs: 0 }));
      worker.start();
      logger.info(
        { smarthost: config.outbound.smarthost ? formatAddress(config.outbound.smarthost) : null, concurrency: config.outbound.concurrency },
        "outbound worker started",
      );
    } else if (outboundEnabled) {
      logger.info({ worker: role.index }, "outbound delivery runs in worker 0; this worker only queues");
    } else {
      logger.info({}, "outbound worker off: submission to other domains is refused (550 5.7.1)");
    }

    let retention: ReturnType<typeof setInterval> | undefined;
    let expiring: Promise<void> = Promise.resolve();
    // Stopping ends a retention run between two mailboxes instead of waiting for the whole store.
    const expireStop = new AbortController();
    const expireDays = config.pop3.expireDays;
    if (expireDays !== null && role.runsJobs) {
      const holder = `expire job on ${osHostname()} pid ${process.pid}`;
      let running = false;
      const run = (): void => {
        // A run that takes longer than the interval (a huge store) is not started twice.
        if (running) return;
        running = true;
        expiring = runExpire(store, { days: expireDays, holder, leaseTtlMs: config.pop3.leaseTtlSeconds * 1000, signal: expireStop.signal })
          .then(
            (result) => logger.info({ ...result, days: expireDays }, "expire run finished"),
            (error: unknown) => logger.error({ err: String(error) }, "expire run failed; retrying in an hour"),
          )
          .finally(() => {
            running = false;
          });
      };
      retention = setInterval(run, HOUR_MS);
      retention.unref?.();
      run();
    }

    logger.info(
      { listeners: listeners.map((l) => ({ listener: l.name, address: l.address })), hostname: config.hostname, store: adapter.name },
      "mailroom ready",
    );

    let stopping: Promise<void> | undefined;
    return {
      store,
      outbound,
      listeners,
      async reloadTls() {
        if (!tls || !files) throw new Error("no certificate is configured");
        reloadContext(tls, await readMaterial(files), files);
      },
      stop() {
        stopping ??= (async () => {
          if (retention) clearInterval(retention);
          expireStop.abort();
          logger.info({ deadlineMs }, "shutting down");
          // The worker stops with the listeners: a delivery cut off at the deadline is retried later.
          await Promise.all([smtp.close({ deadlineMs }), pop3.close({ deadlineMs }), outbound?.stop({ deadlineMs }).then(() => logger.info({}, "outbound worker stopped"))]);
          await http?.close();
          await expiring;
          await store.close();
          logger.info({}, "stopped");
        })();
        return stopping;
      },
    };
  } catch (error) {
    await undo();
    throw error;
  }
}

