import { rfc5322Date } from "@mailroom/store";
import type { TlsInfo } from "@mailroom/transport";

/**
 * Return-Path and Received (RFC 5321 4.4) for each stored copy. Everything that came from the client
 * is sanitised first: a HELO name or address with CR/LF could otherwise add header lines of its choosing.
 */

/** Printable text only, no characters that would end a comment or a header, bounded length. */
export function sanitize(text: string, max = 255): string {
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[\x00-\x20\x7f-\x9f()<>\\;"]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
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
    `Return-Path: <${sanitize(input.mailFrom, 320)}>`,
    `Received: from ${sanitize(input.helo ?? "unknown")} ([${ip}])`,
    `\tby ${sanitize(input.hostname)} (Mailroom) with ${input.protocol} id ${input.id}`,
  ];
  if (input.tls) lines.push(`\t(using ${sanitize(input.tls.protocol, 40)} with cipher ${sanitize(input.tls.cipher, 80)})`);
  const only = input.recipients.length === 1 ? input.recipients[0] : undefined;
  const date = rfc5322Date(input.date);
  lines.push(only === undefined ? `\t; ${date}` : `\tfor <${sanitize(only, 320)}>; ${date}`);
  return `${lines.join("\r\n")}\r\n`;
}
