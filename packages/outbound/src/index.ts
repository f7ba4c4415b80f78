export { createOutbound, defaultRetrySchedule, type Outbound, type OutboundOptions, type SmarthostOptions } from "./worker.js";
export { enqueueRelay, relayToQueue, type RelayEnvelope, type RelayHooks, type RelayVerdict } from "./relay.js";
export { buildDsn, statusOf, type DsnInput, type FailedRecipient } from "./dsn.js";
export { MailRouter, type MailHost, type Route, type ResolverOptions } from "./dns.js";
export {
  deleteItem,
  formatAge,
  formatQueue,
  formatQueueJson,
  listQueue,
  queueStats,
  retryAll,
  retryItem,
  toRow,
  type QueueRow,
  type QueueStats,
  type RetryAllOutcome,
} from "./admin.js";
export type { TlsClientOptions } from "./socket.js";
