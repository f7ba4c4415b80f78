/**
 * `mailroom queue list|retry|delete|run`: the outbound queue for the operator. Each opens the store,
 * does one thing and closes it; `run` makes one delivery pass in this process, which is safe next to
 * a running server because queue items are claimed.
 */
import { isQueueId, isStoreError, type Store } from "@mailroom/store";
import { createOutbound, deleteItem, formatQueue, formatQueueJson, listQueue, retryAll, retryItem } from "@mailroom/outbound";
import type { ServerConfig } from "../config.js";
import { ConfigError } from "../errors.js";
import { createLogger } from "../logger.js";
import { openStore, refuseForeignStoreOwner } from "../registry.js";
import { outboundOptions } from "../outbound-options.js";
import type { Output } from "./admin.js";

async function withQueueStore<T>(config: ServerConfig, action: (store: Store) => Promise<T>): Promise<T> {
  refuseForeignStoreOwner(config.store.url, config.where("store.url"));
  const { store, adapter } = await openStore(config);
  try {
    if ((store as { queue?: unknown }).queue === undefined) throw new Error(`the ${adapter.name} store has no outbound queue`);
    return await action(store);
  } finally {
    await store.close();
  }
}

function checkId(id: string): string {
  if (!isQueueId(id)) throw new ConfigError(`"${id}" is not a queue id (copy one from mailroom queue list)`);
  return id;
}

function notFound(error: unknown, id: string): never {
  if (isStoreError(error) && error.code === "not-found") throw new Error(`no queue item ${id}`, { cause: error });
  throw error;
}

export async function queueList(config: ServerConfig, io: Output, json = false): Promise<void> {
  const rows = await withQueueStore(config, (store) => listQueue(store.queue));
  if (json) {
    // Nothing at all for an empty queue, as `postqueue -j` prints nothing.
    for (const line of formatQueueJson(rows)) io.out(line);
    return;
  }
  io.out(formatQueue(rows).replace(/\n$/, ""));
}

export async function queueRetry(config: ServerConfig, id: string, io: Output, force = false): Promise<void> {
  checkId(id);
  const outcome = await withQueueStore(config, (store) => retryItem(store.queue, id, { force }).catch((e: unknown) => notFound(e, id)));
  if (outcome === "in-delivery") {
    io.out(
      `item ${id} is being delivered right now; left as it is (if that delivery is stuck on a server that is gone, ` +
        `mailroom queue retry --force ${id} ends it, and the message may then be sent twice)`,
    );
    return;
  }
  io.out(`item ${id} is due now; a running server delivers it within a second or two (or run mailroom queue run)`);
}

/** `queue retry --all`: every waiting item due now, like `postqueue -f`. */
export async function queueRetryAll(config: ServerConfig, io: Output): Promise<void> {
  const done = await withQueueStore(config, (store) => retryAll(store.queue));
  const items = (n: number): string => `${n} item${n === 1 ? "" : "s"}`;
  const parts = [`${items(done.retried)} due now`];
  if (done.inDelivery > 0) parts.push(`${items(done.inDelivery)} being delivered left as ${done.inDelivery === 1 ? "it is" : "they are"}`);
  if (done.dead > 0) parts.push(`${items(done.dead)} given up left alone (mailroom queue retry ID retries one)`);
  io.out(parts.join("; "));
}

export async function queueDelete(config: ServerConfig, id: string, io: Output): Promise<void> {
  checkId(id);
  await withQueueStore(config, (store) => deleteItem(store.queue, id).catch((e: unknown) => notFound(e, id)));
  io.out(`deleted item ${id} (no bounce is sent)`);
}

/** One pass over what is due now; exit code 0 even when deliveries were deferred (see queue list). */
export async function queueRun(config: ServerConfig, io: Output): Promise<void> {
  // Log lines go to stderr so that stdout stays the one-line summary.
  const logger = createLogger(config.log.level === "info" ? "warn" : config.log.level, 2);
  await withQueueStore(config, async (store) => {
    const worker = createOutbound(outboundOptions(config, store, logger));
    try {
      const handled = await worker.runOnce();
      io.out(`handled ${handled} item${handled === 1 ? "" : "s"}`);
    } finally {
      await worker.stop({ deadlineMs: config.limits.shutdownTimeoutSeconds * 1000 });
      logger.flush();
    }
  });
}
