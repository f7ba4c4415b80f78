import { randomBytes } from "node:crypto";
import { rfc5322Date } from "@mailroom/store";

/**
 * Delivery status notifications (RFC 3464, RFC 6522): the bounce a sender gets when some recipients
 * could not be reached. One per queued item, naming only the recipients that failed.
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
    [`Final-Recipient: rfc822; ${r.address}`, "Action: failed", `Status: ${statusOf(r.diagnostic)}`, `Diagnostic-Code: ${diagnosticCode(r.diagnostic)}`].join(
      "\r\n",
    ),
  );
  const headers = input.originalHeaders.replace(/\r?\n/g, "\r\n").replace(/(\r\n)*$/, "");
  const parts = [
    `From: Mail Delivery System <MAILER-DAEMON@${input.hostname}>`,
    `To: <${input.to}>`,
    "Subject: Undelivered Mail Returned to Sender",
    `Date: ${rfc5322Date(date)}`,
    `Message-ID: <${id}>`,
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    "",
    "This is a MIME-encapsulated delivery status notification.",
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "Content-Description: Notification",
    "",
    human,
    "",
    `--${boundary}`,
    "Content-Type: message/delivery-status",
    "Content-Description: Delivery report",
    "",
    perMessage,
    "",
    ...perRecipient.flatMap((block) => [block, ""]),
    `--${boundary}`,
    "Content-Type: text/rfc822-headers",
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
