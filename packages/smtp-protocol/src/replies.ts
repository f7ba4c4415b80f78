/**
 * Every reply the server sends is built here. RFC 2034 puts an enhanced status code (RFC 3463) after
 * the basic code on every 2xx/4xx/5xx reply except the greeting and the HELO/EHLO answer, whose first
 * word must be the host name (RFC 5321 4.2 grammar; clients such as Python's smtplib parse EHLO
 * keywords from it). 3xx intermediate replies (354, 334) carry no enhanced code either: RFC 3463
 * defines only the classes 2, 4 and 5.
 */
export interface Reply {
  readonly code: number;
  /** "2.1.0"; absent only for the greeting, HELO/EHLO, 354 and 334. */
  readonly status?: string;
  readonly lines: readonly string[];
}

export function reply(code: number, status: string | undefined, ...lines: string[]): Reply {
  return status === undefined ? { code, lines } : { code, status, lines };
}

/** The wire form: `250-2.0.0 a\r\n250 2.0.0 b\r\n`. */
export function formatReply(r: Reply): string {
  const lines = r.lines.length > 0 ? r.lines : [""];
  let out = "";
  lines.forEach((line, index) => {
    const sep = index === lines.length - 1 ? " " : "-";
    const text = r.status === undefined ? line : line === "" ? r.status : `${r.status} ${line}`;
    out += `${r.code}${sep}${text}\r\n`;
  });
  return out;
}

/** Keeps text from hooks or clients from breaking the reply framing. */
export function cleanText(text: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[\x00-\x1f\x7f]/g, " ").trim();
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

export const R = {
  ok: () => reply(250, "2.0.0", "OK"),
  senderOk: () => reply(250, "2.1.0", "Sender OK"),
  recipientOk: () => reply(250, "2.1.5", "Recipient OK"),
  accepted: (id: string) => reply(250, "2.0.0", `OK: message accepted as ${id}`),
  chunkOk: (size: number) => reply(250, "2.0.0", `${size} octets received`),
  bye: (host: string) => reply(221, "2.0.0", `${host} closing connection`),
  vrfy: () => reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery"),
  help: () =>
    reply(
      214,
      "2.0.0",
      "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
      "See RFC 5321 for details",
    ),
  startData: () => reply(354, undefined, "Start mail input; end with <CRLF>.<CRLF>"),
  startTls: () => reply(220, "2.0.0", "Ready to start TLS"),
  authOk: () => reply(235, "2.7.0", "Authentication successful"),
  authChallenge: (base64: string) => reply(334, undefined, base64),

  unknownCommand: () => reply(500, "5.5.2", "Command not recognized"),
  lineTooLong: () => reply(500, "5.5.2", "Line too long"),
  syntax: (what: string) => reply(501, "5.5.4", `Syntax error: ${what}`),
  notImplemented: () => reply(502, "5.5.1", "Command not implemented"),
  badSequence: (what: string) => reply(503, "5.5.1", what),
  badParam: (what: string) => reply(555, "5.5.4", `Unsupported parameter ${cleanText(what, 40)}`),
  authMechanism: () => reply(504, "5.5.4", "Unrecognized authentication mechanism"),
  authDecode: () => reply(501, "5.5.2", "Cannot decode response"),
  authCancelled: () => reply(501, "5.0.0", "Authentication cancelled"),
  authFailed: () => reply(535, "5.7.8", "Authentication credentials invalid"),
  authTemp: () => reply(454, "4.7.0", "Temporary authentication failure"),
  authNeedsTls: () => reply(538, "5.7.11", "Encryption required for requested authentication mechanism"),
  authRequired: () => reply(530, "5.7.0", "Authentication required"),
  tlsUnavailable: () => reply(454, "4.7.0", "TLS not available"),
  senderNotOwned: () => reply(553, "5.7.1", "Sender address not owned by authenticated user"),
  nullSenderRefused: () => reply(553, "5.7.1", "Empty sender not allowed on submission"),
  badAddress: (what: string) => reply(553, "5.1.3", `Bad address syntax: ${what}`),
  needUtf8: () => reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"),
  sizeExceeded: () => reply(552, "5.3.4", "Message size exceeds fixed maximum message size"),
  tooManyRecipients: () => reply(452, "4.5.3", "Too many recipients"),
  unknownUser: () => reply(550, "5.1.1", "Mailbox unavailable: no such user here"),
  relayDenied: () => reply(554, "5.7.1", "Relay access denied"),
  relayNotEnabled: () => reply(550, "5.7.1", "Delivery to other domains is not enabled yet"),
  bareLineEnding: () => reply(550, "5.6.0", "Message refused: bare CR or LF line ending (only CRLF is allowed)"),
  textLineTooLong: () => reply(550, "5.6.0", "Message refused: line longer than 1000 octets"),
  storeTemporary: () => reply(451, "4.3.0", "Temporary failure, please try again later"),
  storeNoSpace: () => reply(452, "4.3.1", "Insufficient system storage"),
  storePermanent: () => reply(554, "5.3.0", "Message could not be stored"),
  lookupTemporary: () => reply(451, "4.3.0", "Temporary lookup failure, please try again later"),

  shuttingDown: (host: string) => reply(421, "4.3.2", `${host} shutting down`),
  timeout: (host: string) => reply(421, "4.4.2", `${host} timeout, closing connection`),
  sessionTooLong: (host: string) => reply(421, "4.4.2", `${host} connection time limit reached, closing connection`),
  lineTooLongClose: (host: string) => reply(421, "4.7.0", `${host} line too long, closing connection`),
  tooManyErrors: (host: string) => reply(421, "4.7.0", `${host} too many errors, closing connection`),
  tooManyConnections: (host: string) => reply(421, "4.7.0", `${host} too many connections, try again later`),
  tooManyTransactions: (host: string) => reply(421, "4.7.0", `${host} too many transactions, closing connection`),
  chunkTooBig: () => reply(552, "5.3.4", "BDAT chunk exceeds the message size limit, closing connection"),
} as const;

/** The one place where hook verdicts become reply codes. */
export function rejectReply(stage: "connect" | "mail" | "rcpt" | "data", verdict: { reject: "permanent" | "temporary"; message?: string }): Reply {
  const text = verdict.message !== undefined ? cleanText(verdict.message) : "Rejected by policy";
  const permanent = verdict.reject === "permanent";
  switch (stage) {
    case "connect":
      return permanent ? reply(554, "5.7.1", text) : reply(421, "4.7.0", text);
    case "mail":
    case "rcpt":
      return permanent ? reply(550, "5.7.1", text) : reply(451, "4.7.1", text);
    case "data":
      return permanent ? reply(554, "5.7.1", text) : reply(451, "4.7.1", text);
  }
}
