export type {
  Account,
  Alias,
  AppendOptions,
  Delivered,
  DeliverOptions,
  Directory,
  RecipientLookups,
  Lease,
  LeaseOptions,
  Mailbox,
  MailboxId,
  MessageInfo,
  ReadOptions,
  Store,
  StoreAdapter,
  StoreCapabilities,
  StoreOptions,
  Uid,
} from "./contract.js";
export { StoreError, isStoreError, hasStoreErrorCode, isTemporaryError, type StoreErrorCode } from "./errors.js";
export {
  assertMailboxId,
  assertUid,
  domainOf,
  isValidUid,
  normalizeAddress,
  normalizeAliasSource,
  normalizeDomain,
  splitAddress,
} from "./names.js";
export { authenticate, hashPassword, isPasswordHash, verifyPassword, type PasswordHashOptions } from "./password.js";
export { MAX_ALIAS_DEPTH, RECIPIENT_LOOKUP_DEPTH, lookupsFor, resolveRecipient, type Resolution } from "./recipients.js";
export { FetchedRecipientLookups } from "./lookups.js";
export { abortable, countBytes, fromBytes, guardAppendSource, limitBytes, readAll, takeTop } from "./streams.js";
export { silentLogger, type LogFn, type Logger } from "./logger.js";
export { createLoginThrottle, type LoginThrottle, type LoginThrottleOptions } from "./throttle.js";
export { createLoginCache, type LoginCache, type LoginCacheOptions } from "./logincache.js";
export type {
  ClaimOptions,
  EnqueueOptions,
  Queue,
  QueueClaim,
  QueueItem,
  QueueRecipient,
  RescheduleOptions,
  RetryOptions,
  RetryOutcome,
} from "./queue.js";
export { compareAge, compareDue, isQueueId, mergeRecipients, newQueueId } from "./queue.js";
export { rfc5322Date } from "./dates.js";
export {
  currentBootId,
  parseProcessStamp,
  processHasEnded,
  processStamp,
  processStampOf,
  type ProcessStamp,
} from "./liveness.js";
