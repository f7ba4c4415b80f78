/**
 * `[server] workers = N`: N processes serve the same listeners, so a machine with several cores uses
 * them all, as Postfix and Dovecot do with their process-per-connection designs.
 *
 * The primary process only supervises. It forks the workers (node:cluster hands each accepted
 * connection to one of them), forwards SIGTERM/SIGHUP, restarts a worker that dies, and serves the
 * metrics/health endpoint by asking every worker. Each worker is a complete server on the shared
 * store: everything that must hold across processes (POP3's one-session-per-mailbox lease, UIDs,
 * queue claims) already lives in the store, because it has to hold across machines too. What stays
 * per process is divided or assigned: connection limits are split evenly, and the once-per-server
 * jobs (outbound worker, EXPIRE run) run in worker 0 only. The login throttle is kept by every worker
 * and fed by all of them (each failed or good login is passed on through the primary), so spreading
 * guesses over the workers buys an attacker nothing.
 */
import cluster, { type Worker } from "node:cluster";
import type { LoginThrottle } from "@mailroom/store";
import type { AppLogger } from "./logger.js";
import { runtimeName } from "@mailroom/transport";
import { AggregatorRegistry, type Registry } from "prom-client";
import type { ServerConfig } from "./config.js";
import { ConfigError } from "./errors.js";
import { startMetricsServer, type HttpEndpoint } from "./metrics.js";
import { tlsFiles } from "./tls.js";

/** Set by the primary for each worker it forks (not a config key: MAILROOM_WORKER_* is no section). */
export const WORKER_INDEX_ENV = "MAILROOM_WORKER_INDEX";
const HEALTH_TIMEOUT_MS = 3_000;
/** A worker that dies this soon after it started counts towards the crash-loop limit. */
const EARLY_DEATH_MS = 10_000;
const MAX_EARLY_DEATHS = 5;
/** Early deaths further apart than this are not one crash loop. */
const EARLY_DEATH_WINDOW_MS = 60_000;

/**
 * Notes a worker's death (`startedAt`: when it started) in `deaths` and tells whether the workers are
 * in a crash loop: more than MAX_EARLY_DEATHS of them died within EARLY_DEATH_MS of their start, all
 * within the last EARLY_DEATH_WINDOW_MS.
 */
export function isCrashLoop(deaths: number[], startedAt: number, now: number): boolean {
  if (now - startedAt < EARLY_DEATH_MS) deaths.push(now);
  while (deaths.length > 0 && now - deaths[0]! > EARLY_DEATH_WINDOW_MS) deaths.shift();
  return deaths.length > MAX_EARLY_DEATHS;
}

/** What this process does in the server. */
export interface Role {
  /** 0-based worker number; null when the server runs as one process. */
  readonly index: number | null;
  /** How many processes share the listeners (1 without a cluster). */
  readonly workers: number;
  /** Runs the once-per-server jobs: the outbound delivery worker and the EXPIRE run. */
  readonly runsJobs: boolean;
}

export const SINGLE_PROCESS: Role = { index: null, workers: 1, runsJobs: true };

export function isClusterPrimary(config: ServerConfig): boolean {
  return config.server.workers > 1 && cluster.isPrimary;
}

export function currentRole(config: ServerConfig): Role {
  if (!cluster.isWorker) return SINGLE_PROCESS;
  const index = Number(process.env[WORKER_INDEX_ENV] ?? "0");
  return { index, workers: config.server.workers, runsJobs: index === 0 };
}

/** One worker's share of a limit that the whole server should keep (rounded up, at least 1). */
export function share(limit: number, role: Role): number {
  return Math.max(1, Math.ceil(limit / role.workers));
}

// ---- messages between primary and workers -------------------------------------------------------------

/** A login outcome one worker saw, for every other worker's throttle. */
interface ThrottleNews {
  readonly mailroom: "throttle";
  readonly outcome: "failure" | "success";
  readonly client: string;
  readonly login: string;
}

type ToWorker = { readonly mailroom: "health"; readonly id: number } | ThrottleNews;
interface ListenerLine {
  readonly listener: string;
  readonly address: string;
}

type ToPrimary =
  | { readonly mailroom: "ready"; readonly listeners: readonly ListenerLine[] }
  | { readonly mailroom: "health"; readonly id: number; readonly problem: string | null }
  | ThrottleNews;

/**
 * Sends to the primary while it is there. Once it is gone, `process.send` would raise
 * ERR_IPC_CHANNEL_CLOSED as an uncaught error, and a worker finishing its sessions must not crash.
 */
function tellPrimary(message: ToPrimary): void {
  if (process.connected) process.send?.(message);
}

/**
 * In a worker: `handler` runs when the primary is gone (killed, crashed). Node's cluster code exits a
 * worker at once on a disconnect it did not plan, right after emitting the worker's "disconnect"
 * (lib/internal/cluster/child.js); marking the disconnect planned there, before that check, is what
 * lets the worker finish its sessions instead.
 */
export function onPrimaryGone(handler: () => void): void {
  const worker = cluster.worker;
  if (!worker) return;
  worker.on("disconnect", () => {
    worker.exitedAfterDisconnect = true;
    handler();
  });
}

function isToPrimary(message: unknown): message is ToPrimary {
  return typeof message === "object" && message !== null && typeof (message as { mailroom?: unknown }).mailroom === "string";
}

/** In a worker: lets the primary collect this registry and ask for this worker's health. */
export function serveClusterRequests(registry: Registry | null, health: () => Promise<string | null>): void {
  if (registry) {
    // Constructing one is what makes prom-client answer the primary's requests in this process.
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([registry]);
  }
  process.on("message", (message: unknown) => {
    const request = message as Partial<ToWorker> | null;
    if (request?.mailroom !== "health" || typeof request.id !== "number") return;
    const id = request.id;
    health().then(
      (problem) => tellPrimary({ mailroom: "health", id, problem }),
      (error: unknown) => tellPrimary({ mailroom: "health", id, problem: String(error) }),
    );
  });
}

function isThrottleNews(message: unknown): message is ThrottleNews {
  const m = message as Partial<ThrottleNews> | null;
  return (
    m?.mailroom === "throttle" && (m.outcome === "failure" || m.outcome === "success") && typeof m.client === "string" && typeof m.login === "string"
  );
}

/**
 * In a worker: `local`, fed also by the other workers' login outcomes (relayed by the primary), and
 * passing this worker's on to them. Answers stay local and synchronous; what another worker saw
 * arrives within the IPC round trip, long before the same client's next USER/PASS. A worker that
 * is replaced starts with an empty throttle, as a restarted server does.
 */
export function clusterThrottle(local: LoginThrottle): LoginThrottle {
  process.on("message", (message: unknown) => {
    if (!isThrottleNews(message)) return;
    if (message.outcome === "failure") local.failure(message.client, message.login);
    else local.success(message.client, message.login);
  });
  const tell = (outcome: ThrottleNews["outcome"], client: string, login: string): void => {
    tellPrimary({ mailroom: "throttle", outcome, client, login });
  };
  return {
    delayFor: (client, login) => local.delayFor(client, login),
    failure(client, login) {
      local.failure(client, login);
      tell("failure", client, login);
    },
    success(client, login) {
      local.success(client, login);
      tell("success", client, login);
    },
  };
}

/** In a worker: tells the primary that the listeners are open, and where. */
export function reportReady(listeners: readonly ListenerLine[]): void {
  tellPrimary({ mailroom: "ready", listeners });
}

// ---- the primary --------------------------------------------------------------------------------------

interface Slot {
  worker: Worker;
  ready: boolean;
  startedAt: number;
  listeners: readonly ListenerLine[];
}

/** Runs the supervising process until the workers stopped; resolves with the exit code. */
export async function runPrimary(config: ServerConfig, logger: AppLogger): Promise<number> {
  const runtime = runtimeName();
  if (runtime !== "node") {
    throw new ConfigError(`${config.where("server.workers")}: more than one worker needs Node's cluster module; on ${runtime} set workers = 1`);
  }
  const count = config.server.workers;
  const slots = new Map<number, Slot>();
  const pendingHealth = new Map<number, (answer: { index: number; problem: string | null }) => void>();
  let nextHealthId = 1;
  let stopping = false;
  /** When recent workers died young; only a burst of these is a crash loop, not a few over weeks. */
  const earlyDeaths: number[] = [];
  let allReadyOnce = false;
  let http: HttpEndpoint | null = null;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((resolve) => (finish = resolve));
  let exitCode = 0;

  const fork = (index: number): void => {
    const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(index) });
    const slot: Slot = { worker, ready: false, startedAt: Date.now(), listeners: [] };
    slots.set(index, slot);
    worker.on("message", (message: unknown) => {
      if (!isToPrimary(message)) return;
      if (message.mailroom === "ready") {
        slot.ready = true;
        slot.listeners = message.listeners;
        if (!allReadyOnce && [...slots.values()].every((s) => s.ready) && slots.size === count) {
          allReadyOnce = true;
          // The workers share every listener (node:cluster), so worker 0's list holds for all.
          const listeners = [...slots.get(0)!.listeners, ...(http ? [{ listener: "metrics", address: http.address }] : [])];
          logger.info({ workers: count, listeners, hostname: config.hostname, pid: process.pid }, "mailroom ready");
        }
      } else if (message.mailroom === "health") {
        pendingHealth.get(message.id)?.({ index, problem: message.problem });
      } else if (isThrottleNews(message)) {
        for (const [other, s] of slots) if (other !== index && s.worker.isConnected()) s.worker.send(message satisfies ToWorker);
      }
    });
    worker.on("exit", (code, signal) => {
      if (slots.get(index)?.worker === worker) slots.delete(index);
      if (stopping) {
        if (code !== 0) exitCode = 1;
        if (slots.size === 0) void shutdownPrimary();
        return;
      }
      if (!slot.ready) {
        // It never came up (bad config, port taken, store down): the others will not fare better.
        logger.error({ worker: index, code, signal }, "worker failed to start; stopping");
        exitCode = 1;
        stopAll();
        return;
      }
      if (isCrashLoop(earlyDeaths, slot.startedAt, Date.now())) {
        logger.error({ worker: index, code, signal, deaths: earlyDeaths.length }, "workers keep dying right after start; stopping");
        exitCode = 1;
        stopAll();
        return;
      }
      logger.warn({ worker: index, code, signal }, "worker died; starting a new one");
      setTimeout(() => {
        if (!stopping) fork(index);
      }, 1_000).unref();
    });
  };

  const stopAll = (): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ workers: slots.size }, "stopping the workers");
    for (const { worker } of slots.values()) worker.process.kill("SIGTERM");
    if (slots.size === 0) void shutdownPrimary();
    const grace = (config.limits.shutdownTimeoutSeconds + 10) * 1000;
    setTimeout(() => {
      logger.error({ graceMs: grace }, "workers did not stop in time; killing them");
      for (const { worker } of slots.values()) worker.process.kill("SIGKILL");
      exitCode = 1;
    }, grace).unref();
  };

  const shutdownPrimary = async (): Promise<void> => {
    await http?.close();
    logger.info({}, "stopped");
    logger.flush();
    finish(exitCode);
  };

  /** Every worker's health; a worker that does not answer, or is missing, is a problem. */
  const health = async (): Promise<string | null> => {
    const problems: string[] = [];
    for (let index = 0; index < count; index++) {
      if (!slots.get(index)?.ready) problems.push(`worker ${index} is not running`);
    }
    const asked = [...slots.entries()].filter(([, s]) => s.ready);
    const answers = await Promise.all(
      asked.map(
        ([index, s]) =>
          new Promise<{ index: number; problem: string | null }>((resolve) => {
            const id = nextHealthId++;
            const timer = setTimeout(() => {
              pendingHealth.delete(id);
              resolve({ index, problem: `did not answer within ${HEALTH_TIMEOUT_MS} ms` });
            }, HEALTH_TIMEOUT_MS);
            pendingHealth.set(id, (answer) => {
              clearTimeout(timer);
              pendingHealth.delete(id);
              resolve(answer);
            });
            try {
              s.worker.send({ mailroom: "health", id } satisfies ToWorker);
            } catch (error) {
              pendingHealth.get(id)?.({ index, problem: String(error) });
            }
          }),
      ),
    );
    for (const answer of answers) if (answer.problem !== null) problems.push(`worker ${answer.index}: ${answer.problem}`);
    return problems.length === 0 ? null : problems.join("; ");
  };

  if (config.metrics.listen) {
    const aggregator = new AggregatorRegistry();
    try {
      http = await startMetricsServer(config.metrics.listen, {
        contentType: aggregator.contentType,
        collect: () => aggregator.clusterMetrics(),
        health,
      });
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      throw new Error(`${config.where("metrics.listen")}: ${why}`, { cause: error });
    }
    logger.info({ listener: "metrics", address: http.address }, "listening");
  }

  // The development setup makes its certificate on first start: once here, not in every worker at once.
  if (config.development) await tlsFiles(config);

  logger.info({ workers: count, pid: process.pid }, "starting workers");
  for (let index = 0; index < count; index++) fork(index);

  let signals = 0;
  const onStop = (signal: string): void => {
    if (++signals > 1) {
      logger.warn({ signal }, "second signal: killing the workers");
      for (const { worker } of slots.values()) worker.process.kill("SIGKILL");
      logger.flush();
      finish(1);
      return;
    }
    logger.info({ signal }, "signal received, stopping");
    stopAll();
  };
  process.on("SIGTERM", () => onStop("SIGTERM"));
  process.on("SIGINT", () => onStop("SIGINT"));
  try {
    process.on("SIGHUP", () => {
      logger.info({}, "SIGHUP: asking every worker to reload the certificate");
      // A worker still starting reads the current certificate anyway.
      for (const { worker, ready } of slots.values()) if (ready) worker.process.kill("SIGHUP");
    });
  } catch {
    // No SIGHUP on this platform.
  }
  return finished;
}
