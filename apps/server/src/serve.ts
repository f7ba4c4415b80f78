/**
 * Wires one server process together: store, certificate, SMTP (mx + submission) and POP3 listeners,
 * the retention job, and an orderly stop.
 */
import { hostname as osHostname } from "node:os";
import { createLoginThrottle, type Logger, type Store } from "@mailroom/store";
import { createPop3Server, runExpire } from "@mailroom/pop3-protocol";
import { createSmtpServer } from "@mailroom/smtp-protocol";
import { runtimeName, type Listener, type RuntimeName } from "@mailroom/transport";
import { formatAddress, type ListenAddress, type ServerConfig } from "./config.js";
import { openStore } from "./registry.js";
import { ensureDevelopmentDomain } from "./development.js";
import { contextFrom, readMaterial, tlsFiles, type TlsFiles } from "./tls.js";

/**
 * Things a runtime is known not to do, each said once at start-up. Empty for now: every runtime we
 * test passes the suite. Kept so that a known gap is reported instead of failing mysteriously.
 */
export function runtimeLimitations(runtime: RuntimeName): readonly string[] {
  switch (runtime) {
    case "node":
    case "bun":
    case "deno":
      return [];
  }
}

export interface ListenerInfo {
  /** smtp, submission, submissions, pop3 or pop3s. */
  readonly name: string;
  /** The config key it comes from. */
  readonly key: string;
  /** The actual address (with the port the system picked for port 0). */
  readonly address: string;
}

export interface RunningServer {
  readonly store: Store;
  readonly listeners: readonly ListenerInfo[];
  /** Re-reads the certificate and key; keeps the old ones and throws if the new ones are bad. */
  reloadTls(): Promise<void>;
  /** Stops accepting, lets sessions finish within the deadline, releases leases, closes the store. */
  stop(): Promise<void>;
}

const HOUR_MS = 3_600_000;

export async function startServer(config: ServerConfig, logger: Logger): Promise<RunningServer> {
  const runtime = runtimeName();
  for (const limitation of runtimeLimitations(runtime)) logger.warn({ runtime }, limitation);

  // Certificate problems are found before the store is touched.
  const files: TlsFiles | null = await tlsFiles(config);
  const tls = files ? contextFrom(await readMaterial(files), files) : undefined;
  if (!tls) logger.warn({}, "no [tls] configured: STARTTLS and STLS are off, and AUTH works only where plaintext is allowed");

  const { store, adapter } = await openStore(config);
  const cleanups: Array<() => Promise<void>> = [() => store.close()];
  const undo = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    logger.info({ store: adapter.name, runtime }, "store opened");
    await ensureDevelopmentDomain(store, config, logger);

    const loginThrottle = createLoginThrottle();
    const smtp = createSmtpServer({
      store,
      hostname: config.hostname,
      ...(tls ? { tls } : {}),
      logger: logger.child({ protocol: "smtp" }),
      loginThrottle,
      allowLoopbackPlaintextAuth: config.smtp.allowLoopbackPlaintextAuth,
      bareLineEndings: config.smtp.bareLineEndings,
      limits: {
        maxMessageBytes: config.smtp.maxMessageSize,
        maxRecipients: config.smtp.maxRecipients,
        maxConnections: config.limits.maxConnections,
        maxConnectionsPerAddress: config.limits.maxConnectionsPerAddress,
      },
    });
    const pop3 = createPop3Server({
      store,
      hostname: config.hostname,
      ...(tls ? { tls } : {}),
      logger: logger.child({ protocol: "pop3" }),
      loginThrottle,
      allowPlaintextAuth: config.pop3.allowPlaintextAuth,
      expireDays: config.pop3.expireDays,
      loginDelaySeconds: config.pop3.loginDelaySeconds,
      idleTimeoutMs: config.pop3.idleTimeoutSeconds * 1000,
      leaseTtlMs: config.pop3.leaseTtlSeconds * 1000,
      maxConnections: config.limits.maxConnections,
      maxConnectionsPerAddress: config.limits.maxConnectionsPerAddress,
    });
    const deadlineMs = config.limits.shutdownTimeoutSeconds * 1000;
    cleanups.push(
      () => smtp.close({ deadlineMs: 0 }),
      () => pop3.close({ deadlineMs: 0 }),
    );

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

    let retention: ReturnType<typeof setInterval> | undefined;
    let expiring: Promise<void> = Promise.resolve();
    const expireDays = config.pop3.expireDays;
    if (expireDays !== null) {
      const holder = `expire job on ${osHostname()} pid ${process.pid}`;
      let running = false;
      const run = (): void => {
        // A run that takes longer than the interval (a huge store) is not started twice.
        if (running) return;
        running = true;
        expiring = runExpire(store, { days: expireDays, holder, leaseTtlMs: config.pop3.leaseTtlSeconds * 1000 })
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
      listeners,
      async reloadTls() {
        if (!tls || !files) throw new Error("no certificate is configured");
        const material = await readMaterial(files);
        tls.reload(material);
      },
      stop() {
        stopping ??= (async () => {
          if (retention) clearInterval(retention);
          logger.info({ deadlineMs }, "shutting down");
          await Promise.all([smtp.close({ deadlineMs }), pop3.close({ deadlineMs })]);
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
