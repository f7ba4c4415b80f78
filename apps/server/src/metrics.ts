/**
 * Prometheus metrics and the health endpoint. The protocol packages have no metric hooks, so session
 * events are counted from what they already report: a logger wrapper recognises their log lines
 * (connect/close, commands, "message done"), a LoginThrottle wrapper counts failures, and store
 * proxies time store calls and count the bytes POP3 sends.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { queueStats } from "@mailroom/outbound";
import type { Logger, LoginThrottle, Store } from "@mailroom/store";
import { formatAddress, type ListenAddress } from "./config.js";
import { timedStore } from "./store-timing.js";

export type Protocol = "smtp" | "pop3";

export interface ServerMetrics {
  readonly registry: Registry;
  /** A logger that counts what the protocol's sessions report, then passes every line on. */
  sessionLogger(protocol: Protocol, logger: Logger): Logger;
  /** Counts outbound delivery attempts from the worker's log lines. */
  outboundLogger(logger: Logger): Logger;
  /** Counts failed logins per protocol; the throttling itself is the shared one's. */
  throttle(protocol: Protocol, inner: LoginThrottle): LoginThrottle;
  /** The store with every call timed. */
  timed(store: Store): Store;
  /** The store POP3 reads through: full-message reads (RETR, not TOP) count as messages and bytes out. */
  countingRetrievals(store: Store): Store;
}

/** SMTP session log messages → the command they stand for. */
const SMTP_COMMANDS: Readonly<Record<string, string>> = {
  "mail from": "MAIL",
  "mail from refused": "MAIL",
  rcpt: "RCPT",
  "rcpt refused": "RCPT",
  starttls: "STARTTLS",
  "tls handshake failed": "STARTTLS",
  "auth ok": "AUTH",
  "auth failed": "AUTH",
  "auth refused: too many failures": "AUTH",
  "message done": "DATA",
  "message refused": "DATA",
};

export function createMetrics(options: { readonly store: Store; readonly queueEnabled: boolean }): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const connections = new Gauge({ name: "mailroom_connections", help: "Open client connections", labelNames: ["protocol"], registers: [registry] });
  const connectionsTotal = new Counter({
    name: "mailroom_connections_total",
    help: "Client connections accepted",
    labelNames: ["protocol"],
    registers: [registry],
  });
  const commands = new Counter({
    name: "mailroom_commands_total",
    help: "Protocol commands handled (SMTP: HELO/EHLO, MAIL, RCPT, STARTTLS, AUTH, DATA; POP3: every command)",
    labelNames: ["protocol", "command"],
    registers: [registry],
  });
  const messagesIn = new Counter({ name: "mailroom_smtp_messages_received_total", help: "Messages accepted over SMTP", registers: [registry] });
  const bytesIn = new Counter({ name: "mailroom_smtp_received_bytes_total", help: "Octets of messages accepted over SMTP", registers: [registry] });
  const messagesOut = new Counter({ name: "mailroom_pop3_messages_retrieved_total", help: "Messages sent whole by POP3 RETR", registers: [registry] });
  const bytesOut = new Counter({ name: "mailroom_pop3_retrieved_bytes_total", help: "Octets of messages sent by POP3 RETR", registers: [registry] });
  const authFailures = new Counter({
    name: "mailroom_auth_failures_total",
    help: "Failed logins (wrong user or password)",
    labelNames: ["protocol"],
    registers: [registry],
  });
  const attempts = new Counter({
    name: "mailroom_outbound_attempts_total",
    help: "Outbound delivery attempts, per destination (one per domain and item)",
    registers: [registry],
  });
  const latency = new Histogram({
    name: "mailroom_store_operation_duration_seconds",
    help: "Time taken by store calls, per operation (e.g. mailbox.append, directory.getAccount, queue.claim)",
    labelNames: ["operation", "outcome"],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  if (options.queueEnabled) {
    const store = options.store;
    new Gauge({
      name: "mailroom_queue_items",
      help: "Outbound queue items, by state (queued: waiting for delivery; dead: given up, kept for the operator)",
      labelNames: ["state"],
      registers: [registry],
      // Every worker of a cluster reads the same queue: the primary keeps one value, not the sum.
      aggregator: "max",
      async collect() {
        const stats = await queueStats(store.queue).catch(() => null);
        if (!stats) return;
        this.set({ state: "queued" }, stats.queued);
        this.set({ state: "dead" }, stats.dead);
      },
    });
    new Gauge({
      name: "mailroom_queue_oldest_age_seconds",
      help: "Age of the oldest item waiting in the outbound queue (0 when empty)",
      registers: [registry],
      aggregator: "max",
      async collect() {
        const stats = await queueStats(store.queue).catch(() => null);
        if (stats) this.set(stats.oldestAgeMs / 1000);
      },
    });
  }

  const observe = (protocol: Protocol, message: string, fields: Record<string, unknown>): void => {
    if (protocol === "smtp") {
      if (message === "connect") {
        connections.inc({ protocol });
        connectionsTotal.inc({ protocol });
        return;
      }
      if (message === "close") {
        connections.dec({ protocol });
        return;
      }
      if (message === "helo") {
        commands.inc({ protocol, command: fields["extended"] === true ? "EHLO" : "HELO" });
        return;
      }
      const command = SMTP_COMMANDS[message];
      if (command) commands.inc({ protocol, command });
      if (message === "message done" && typeof fields["code"] === "number" && fields["code"] < 300) {
        messagesIn.inc();
        if (typeof fields["size"] === "number") bytesIn.inc(fields["size"]);
      }
      return;
    }
    if (message === "connected") {
      connections.inc({ protocol });
      connectionsTotal.inc({ protocol });
    } else if (message === "disconnected") connections.dec({ protocol });
    else if (message === "command" && typeof fields["command"] === "string") {
      commands.inc({ protocol, command: fields["command"].toUpperCase().slice(0, 16) });
    }
  };

  return {
    registry,
    sessionLogger: (protocol, logger) => tap(logger, (message, fields) => observe(protocol, message, fields)),
    outboundLogger: (logger) =>
      tap(logger, (message) => {
        if (message === "delivery attempt") attempts.inc();
      }),
    throttle: (protocol, inner) => ({
      delayFor: (client, login) => inner.delayFor(client, login),
      failure: (client, login) => {
        authFailures.inc({ protocol });
        inner.failure(client, login);
      },
      success: (client, login) => inner.success(client, login),
    }),
    timed: (store) =>
      timedStore(store, (operation, seconds, ok) => latency.observe({ operation, outcome: ok ? "ok" : "error" }, seconds)),
    countingRetrievals: (store) => countRetrievals(store, (bytes) => bytesOut.inc(bytes), () => messagesOut.inc()),
  };
}

/** Wraps a logger (and every child made from it) so that `see` gets each line before it is logged. */
function tap(logger: Logger, see: (message: string, fields: Record<string, unknown>) => void): Logger {
  const method =
    (name: "debug" | "info" | "warn" | "error") =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      try {
        if (typeof fieldsOrMessage === "string") see(fieldsOrMessage, {});
        else if (message !== undefined) see(message, fieldsOrMessage);
      } catch {
        // Counting must never break a session.
      }
      if (typeof fieldsOrMessage === "string") logger[name](fieldsOrMessage);
      else if (message === undefined) logger[name](fieldsOrMessage);
      else logger[name](fieldsOrMessage, message);
    };
  return {
    debug: method("debug"),
    info: method("info"),
    warn: method("warn"),
    error: method("error"),
    child: (bindings) => tap(logger.child(bindings), see),
  };
}

/** Counts the bytes of whole-message reads as they stream; a read that fails midway counts what was sent. */
function countRetrievals(store: Store, onBytes: (n: number) => void, onMessage: () => void): Store {
  return new Proxy(store, {
    get(target, property) {
      if (property !== "mailbox") {
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      }
      return (id: Parameters<Store["mailbox"]>[0]) => {
        const mailbox = target.mailbox(id);
        return new Proxy(mailbox, {
          get(inner, name) {
            const value: unknown = Reflect.get(inner, name, inner);
            if (name !== "read" || typeof value !== "function") {
              return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(inner) : value;
            }
            return async (...args: Parameters<typeof mailbox.read>) => {
              const source = await mailbox.read(...args);
              if (args[1]?.bodyLines !== undefined) return source;
              return (async function* counted() {
                for await (const chunk of source) {
                  onBytes(chunk.byteLength);
                  yield chunk;
                }
                onMessage();
              })();
            };
          },
        });
      };
    },
  });
}

export interface HttpEndpoint {
  /** "host:port" actually bound. */
  readonly address: string;
  close(): Promise<void>;
}

const HEALTH_TIMEOUT_MS = 2_000;

/** What the endpoint serves: the metrics text and a health check (null = healthy, else the problem). */
export interface MetricsSource {
  readonly contentType: string;
  collect(): Promise<string>;
  health(): Promise<string | null>;
}

/** The store answers a ping within 2 s: null, else what went wrong. */
export async function storeHealth(store: Store): Promise<string | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`store did not answer within ${HEALTH_TIMEOUT_MS} ms`), HEALTH_TIMEOUT_MS);
  });
  try {
    return await Promise.race([
      store.ping().then(
        () => null,
        (error: unknown) => `store ping failed: ${(error instanceof Error ? error.message : String(error)).split("\n")[0]}`,
      ),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** One process's metrics and the store's health. */
export function localSource(metrics: ServerMetrics, store: Store): MetricsSource {
  return { contentType: metrics.registry.contentType, collect: () => metrics.registry.metrics(), health: () => storeHealth(store) };
}

const MAX_METRICS_CONNECTIONS = 16;
const METRICS_TIMEOUT_MS = 10_000;

/** `GET /metrics` (Prometheus text format) and `GET /healthz` (200 "ok" when `health` finds no problem). */
export async function startMetricsServer(address: ListenAddress, source: MetricsSource): Promise<HttpEndpoint> {
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    const send = (status: number, type: string, body: string): void => {
      response.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      response.end(request.method === "HEAD" ? undefined : body);
    };
    if (request.method !== "GET" && request.method !== "HEAD") return send(405, "text/plain; charset=utf-8", "method not allowed\n");
    if (path === "/metrics") {
      source.collect().then(
        (text) => send(200, source.contentType, text),
        (error: unknown) => send(500, "text/plain; charset=utf-8", `cannot collect metrics: ${String(error)}\n`),
      );
      return;
    }
    if (path === "/healthz") {
      void source.health().then((problem) => (problem === null ? send(200, "text/plain; charset=utf-8", "ok\n") : send(503, "text/plain; charset=utf-8", `${problem}\n`)));
      return;
    }
    send(404, "text/plain; charset=utf-8", "not found; try /metrics or /healthz\n");
  });
  // A scraper needs a connection or two, for a second: anything that holds more, or longer, costs
  // descriptors the mail listeners need. Connections over the cap are closed at once.
  server.maxConnections = MAX_METRICS_CONNECTIONS;
  server.headersTimeout = METRICS_TIMEOUT_MS;
  server.requestTimeout = METRICS_TIMEOUT_MS;
  server.setTimeout(METRICS_TIMEOUT_MS, (socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(address.port, address.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  return {
    address: formatAddress({ host: bound.address, port: bound.port }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}
