export { createSmtpServer } from "./server.js";
export type {
  Envelope,
  ListenerMode,
  Recipient,
  RecipientVerdict,
  Reject,
  SessionInfo,
  SmtpHooks,
  SmtpLimits,
  SmtpLimitsOptions,
  SmtpListenOptions,
  SmtpServer,
  SmtpServerOptions,
  SmtpTimeouts,
  Verdict,
} from "./types.js";
export { DEFAULT_LIMITS } from "./types.js";
export { parseCommand, LineReader } from "./parser.js";
export type { Command, ParseResult, Path, Params } from "./commands.js";
export { DataDecoder, type DataDecoderOptions, type DataProblem, type DecodeResult } from "./data-stream.js";
export { formatReply, type Reply } from "./replies.js";
export type { Listener } from "@mailroom/transport";
