import { createHash } from "node:crypto";
import { join } from "node:path";

/**
 * Where a mailbox lives: `<root>/<domain>/<local>/`, the layout of Postfix virtual delivery and of
 * Dovecot's `mail_location = maildir:<root>/%d/%n`. Ids are arbitrary strings, so each segment is
 * encoded reversibly:
 *
 * - lower-case letters, digits and `. _ + = -` stay as they are (every ordinary address does);
 * - any other octet of the UTF-8 form becomes `%XX` (upper-case letters too, so that ids differing
 *   only in case stay apart on case-insensitive file systems);
 * - a leading `.` becomes `%2E`, so no segment is `.`, `..` or a hidden file;
 * - a leading `mailroom-` has its `m` encoded, because that prefix names our own files;
 * - ids without a usable `@` go under the directory `@`, which encoding never produces;
 * - a segment whose encoding is longer than {@link MAX_SEGMENT} keeps a readable prefix plus `~` and a
 *   hash; the exact id is then kept in `<maildir>/mailroom-id` (`~` never appears otherwise).
 */

const SAFE = /^[a-z0-9._+=-]$/;
export const MAX_SEGMENT = 120;
/** Domain directory for ids that are not `local@domain`. */
export const NO_DOMAIN = "@";
export const ID_FILE = "mailroom-id";
export const RESERVED_PREFIX = "mailroom-";

const encoder = new TextEncoder();

function hex2(byte: number): string {
  return `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
}

export function encodeSegment(value: string): { segment: string; hashed: boolean } {
  let out = "";
  for (const char of value) {
    if (SAFE.test(char)) out += char;
    else for (const byte of encoder.encode(char)) out += hex2(byte);
  }
  if (out.startsWith(".")) out = `%2E${out.slice(1)}`;
  if (out.startsWith(RESERVED_PREFIX)) out = `%6D${out.slice(1)}`;
  if (out.length <= MAX_SEGMENT) return { segment: out, hashed: false };
  const digest = createHash("sha256").update(value).digest("hex").slice(0, 32);
  // Cut before a partial escape so the prefix stays readable.
  let prefix = out.slice(0, 60);
  const cut = prefix.lastIndexOf("%");
  if (cut >= 58) prefix = prefix.slice(0, cut);
  return { segment: `${prefix}~${digest}`, hashed: true };
}

/** The inverse of encodeSegment for unhashed segments; null for anything encoding cannot produce. */
export function decodeSegment(segment: string): string | null {
  if (segment.length === 0 || segment.includes("~")) return null;
  try {
    return decodeURIComponent(segment);
  } catch {
    return null;
  }
}

export interface MailboxLocation {
  /** Absolute path of the maildir (the directory holding cur/ new/ tmp/). */
  readonly dir: string;
  /** True when the path alone does not give the id back (`mailroom-id` holds it). */
  readonly hashed: boolean;
}

export function locateMailbox(root: string, id: string): MailboxLocation {
  const at = id.lastIndexOf("@");
  if (at > 0 && at < id.length - 1) {
    const local = encodeSegment(id.slice(0, at));
    const domain = encodeSegment(id.slice(at + 1));
    return { dir: join(root, domain.segment, local.segment), hashed: local.hashed || domain.hashed };
  }
  const whole = encodeSegment(id);
  return { dir: join(root, NO_DOMAIN, whole.segment), hashed: whole.hashed };
}

/** Ids remembered by one locator; past this the memory starts over (ids are cheap to encode again). */
const LOCATOR_MEMORY = 10_000;

/**
 * `locateMailbox` for one root with a memory: every delivery and every POP3 login asks for the same few
 * mailboxes again, and encoding the segments and joining the path was a visible part of a small
 * message's CPU.
 */
export function mailboxLocator(root: string): (id: string) => MailboxLocation {
  let known = new Map<string, MailboxLocation>();
  return (id) => {
    let location = known.get(id);
    if (location === undefined) {
      location = locateMailbox(root, id);
      if (known.size >= LOCATOR_MEMORY) known = new Map();
      known.set(id, location);
    }
    return location;
  };
}

/** The id of the maildir at `<domainDir>/<localDir>`, or null when it needs `mailroom-id`. */
export function idFromSegments(domainDir: string, localDir: string): string | null {
  const local = decodeSegment(localDir);
  if (local === null) return null;
  if (domainDir === NO_DOMAIN) return local;
  const domain = decodeSegment(domainDir);
  return domain === null ? null : `${local}@${domain}`;
}
