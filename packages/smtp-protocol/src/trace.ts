import { rfc5322Date } from "@mailroom/store";
import type { TlsInfo } from "@mailroom/transport";

/**
 * Return-Path and Received (RFC 5321 4.4) for each stored copy. Everything that came from the client
 * is sanitised first: a HELO name or address with CR/LF could otherwise add header lines of its choosing.
 */

/**
 * A name for the Received header (HELO name, host name, TLS names): printable ASCII only, none of the
 * characters that would end a comment or a header, bounded length. A HELO name is never legitimately
 * anything else, not even in an SMTPUTF8 transaction, and the header must stay 7-bit for a message
 * that may be relayed to a server without SMTPUTF8 or 8BITMIME.
 */
export function sanitize(text: string, max = 255): string {
  const clean = text.replace(/[^\x21-\x7e]|[()<>\\;"]/gu, "?");
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

/**
 * A path for Return-Path and `for <>`, kept as sent: quotes, spaces and backslashes belong to a quoted
 * local part, and inside `<>` they break nothing. Only control characters could (the parser already
 * refuses them). UTF-8 stays only in an SMTPUTF8 transaction (RFC 6532 3.2), the only one whose
 * addresses can have it.
 */
export function pathText(address: string, utf8: boolean): string {
  // eslint-disable-next-line no-control-regex
  return address.replace(utf8 ? /[\x00-\x1f\x7f-\x9f]/g : /[^\x20-\x7e]/gu, "?");
}

export interface TraceInput {
  readonly helo: string | null;
  readonly remoteAddress: string;
  readonly hostname: string;
  /** "ESMTP", "ESMTPSA", "UTF8SMTPS", … (RFC 3848, RFC 6531). */
  readonly protocol: string;
  readonly id: string;
  readonly tls: TlsInfo | null;
  readonly mailFrom: string;
  /** An SMTPUTF8 transaction: its addresses may be UTF-8. */
  readonly utf8: boolean;
  /** Named in the header only when there is exactly one. */
  readonly recipients: readonly string[];
  readonly date: Date;
}

export function withProtocol(options: { extended: boolean; utf8: boolean; secure: boolean; authenticated: boolean }): string {
  const base = options.utf8 ? "UTF8SMTP" : options.extended ? "ESMTP" : "SMTP";
  if (base === "SMTP") return "SMTP";
  return `${base}${options.secure ? "S" : ""}${options.authenticated ? "A" : ""}`;
}

export function traceHeaders(input: TraceInput): string {
  const ip = input.remoteAddress.includes(":") ? `IPv6:${input.remoteAddress}` : input.remoteAddress;
  const lines = [
    `Return-Path: <${pathText(input.mailFrom, input.utf8)}>`,
    `Received: from ${sanitize(input.helo ?? "unknown")} ([${ip}])`,
    `\tby ${sanitize(input.hostname)} (Mailroom) with ${input.protocol} id ${input.id}`,
  ];
  if (input.tls) lines.push(`\t(using ${sanitize(input.tls.protocol, 40)} with cipher ${sanitize(input.tls.cipher, 80)})`);
  const only = input.recipients.length === 1 ? input.recipients[0] : undefined;
  const date = rfc5322Date(input.date);
  lines.push(only === undefined ? `\t; ${date}` : `\tfor <${pathText(only, input.utf8)}>; ${date}`);
  return `${lines.join("\r\n")}\r\n`;
}
