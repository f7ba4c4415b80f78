/**
 * Moving mail between stores, and from Dovecot, without changing any POP3 UIDL. The server's CLI
 * wires these into `mailroom store copy` and `mailroom import dovecot`.
 */
export {
  copyStore,
  verifyCopy,
  type CopyFailure,
  type CopyOptions,
  type CopyProgressEvent,
  type CopyReport,
  type CopyTotals,
  type MailboxDifference,
  type VerifyOptions,
  type VerifyReport,
} from "./copy.js";
export {
  DOVECOT_DEFAULT_UIDL_FORMAT,
  formatDovecotUidl,
  importDovecotMaildir,
  parseDovecotUidlist,
  type DovecotUidlist,
  type ImportDovecotOptions,
  type ImportProgressEvent,
  type ImportReport,
  type UidlistRecord,
  type UidlVariables,
} from "./dovecot.js";
export { lfToCrlf } from "./crlf.js";
export { formatBytes, summarizeCopy, summarizeImport, summarizeVerify } from "./summary.js";
