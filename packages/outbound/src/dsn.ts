import { randomBytes } from "node:crypto";
import { rfc5322Date } from "@mailroom/store";

/**
 * Delivery status notifications (RFC 3464, RFC 6522): the bounce a sender gets when some recipients
 * could not be reached. One per queued item, naming only the recipients that failed. For mail that came
 * with SMTPUTF8, the internationalised form of RFC 6533.
 */

export interface FailedRecipient {
  readonly address: string;
  /** "550 5.1.1 no such user" for a reply from a server, or "5.1.10 domain ..." for our own verdict. */
  readonly diagnostic: string;
}

export interface DsnInput {
  /** Our host name: Reporting-MTA and MAILER-DAEMON@ it. */
  readonly hostname: string;
  /** The envelope sender of the failed message (never ""). */
  readonly to: string;
  readonly arrivalDate: Date;
  readonly failed: readonly FailedRecipient[];
  /** The original message's header section (up to and without the empty line), or "". */
  readonly originalHeaders: string;
  readonly date?: Date;
  /**
   * The original came with SMTPUTF8 (RFC 6531), so its addresses and header fields may be UTF-8, which
   * message/delivery-status and text/rfc822-headers cannot carry: the report uses RFC 6533's
   * message/global-delivery-status and message/global-headers instead. A non-ASCII address in `to` or
   * `failed` implies it.
   */
  readonly utf8?: boolean;
}

/** Whether `buildDsn` makes the RFC 6533 report for this input: its text is then UTF-8, not ASCII. */
export function isGlobalDsn(input: Pick<DsnInput, "to" | "failed" | "utf8">): boolean {
  return input.utf8 === true || !isAscii(input.to) || input.failed.some((r) => !isAscii(r.address));
}

function isAscii(text: string): boolean {
  return !/[^\x00-\x7f]/.test(text);
}

/**
 * RFC 6533 section 3, utf-8-addr-unitext: non-ASCII stays UTF-8, and of ASCII only QCHAR (printable
 * characters other than backslash, "+" and "=") stands for itself; controls, space, backslash, "+" and
 * "=" become EmbeddedUnicodeChar `\x{HEX}` (two uppercase digits, as the ABNF's HEXPOINT spells them).
 */
function utf8AddrUnitext(address: string): string {
  return address.replace(/[\x00-\x20\x7f\\+=]/g, (c) => `\\x{${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}}`);
}

/** RFC 3464's rfc822 type for an ASCII address; RFC 6533's utf-8 type (unitext form) for any other. */
function recipientField(address: string): string {
  return isAscii(address) ? `rfc822; ${address}` : `utf-8; ${utf8AddrUnitext(address)}`;
}

/** The enhanced status code (RFC 3463) of a diagnostic, else a generic one of its class. */
export function statusOf(diagnostic: string): string {
  const match = /^(?:\d{3}[ -])?([245]\.\d{1,3}\.\d{1,3})\b/.exec(diagnostic);
  if (match?.[1]) return match[1];
  const code = /^([245])\d\d\b/.exec(diagnostic)?.[1];
  return code ? `${code}.0.0` : "5.0.0";
}

/** RFC 3464 2.3.6: "smtp;" only for a server's reply; our own verdicts carry our own type. */
function diagnosticCode(diagnostic: string): string {
  const oneLine = diagnostic.replace(/[\r\n]+/g, " ").slice(0, 900);
  return /^\d{3}\b/.test(oneLine) ? `smtp; ${oneLine}` : `X-Mailroom; ${oneLine}`;
}

export function buildDsn(input: DsnInput): string {
  const global = isGlobalDsn(input);
  const boundary = `=_mailroom_${randomBytes(12).toString("hex")}`;
  const date = input.date ?? new Date();
  const id = `${date.getTime().toString(36)}.${randomBytes(6).toString("hex")}@${input.hostname}`;
  const list = input.failed.map((r) => `  <${r.address}>: ${r.diagnostic.replace(/[\r\n]+/g, " ")}`).join("\r\n");
  const human = [
    `This is the mail system at ${input.hostname}.`,
    "",
    "Your message could not be delivered to the following recipients:",
    "",
    list,
    "",
    "The headers of your message are attached below.",
  ].join("\r\n");
  const perMessage = [`Reporting-MTA: dns; ${input.hostname}`, `Arrival-Date: ${rfc5322Date(input.arrivalDate)}`].join("\r\n");
  const perRecipient = input.failed.map((r) =>
    [`Final-Recipient: ${recipientField(r.address)}`, "Action: failed", `Status: ${statusOf(r.diagnostic)}`, `Diagnostic-Code: ${diagnosticCode(r.diagnostic)}`].join(
      "\r\n",
    ),
  );
  const headers = input.originalHeaders.replace(/\r?\n/g, "\r\n").replace(/(\r\n)*$/, "");
  // Raw UTF-8 in a part (addresses, the original's header fields) is 8-bit data, which RFC 2045 wants
  // labelled: each such part and the multipart around it say 8bit (RFC 6533's types allow it).
  const eightBit = global ? ["Content-Transfer-Encoding: 8bit"] : [];
  const parts = [
    `From: Mail Delivery System <MAILER-DAEMON@${input.hostname}>`,
    `To: <${input.to}>`,
    "Subject: Undelivered Mail Returned to Sender",
    `Date: ${rfc5322Date(date)}`,
    `Message-ID: <${id}>`,
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    // RFC 6522: the report type is the subtype of the second part, so it follows RFC 6533's global type.
    `Content-Type: multipart/report; report-type=${global ? "global-delivery-status" : "delivery-status"}; boundary="${boundary}"`,
    ...eightBit,
    "",
    "This is a MIME-encapsulated delivery status notification.",
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    ...eightBit,
    "Content-Description: Notification",
    "",
    human,
    "",
    `--${boundary}`,
    global ? "Content-Type: message/global-delivery-status" : "Content-Type: message/delivery-status",
    ...eightBit,
    "Content-Description: Delivery report",
    "",
    perMessage,
    "",
    ...perRecipient.flatMap((block) => [block, ""]),
    `--${boundary}`,
    global ? "Content-Type: message/global-headers" : "Content-Type: text/rfc822-headers",
    ...eightBit,
    "Content-Description: Undelivered message headers",
    "",
    headers,
    "",
    `--${boundary}--`,
    "",
  ];
  return parts.join("\r\n");
}

/** The header section of a message: everything before the first empty line, at most `limit` octets. */
export async function readHeaders(source: AsyncIterable<Uint8Array>, limit = 64 * 1024): Promise<string> {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  let text = "";
  for await (const chunk of source) {
    text += decoder.decode(chunk, { stream: true });
    const end = text.search(/\r?\n\r?\n/);
    if (end >= 0) return text.slice(0, end);
    if (text.length > limit) break;
  }
  return text.slice(0, limit);
}
