import { domainToASCII } from "node:url";
import { StoreError } from "./errors.js";
import type { MailboxId, Uid } from "./contract.js";

/** RFC 5321 limits: 64 octets of local part, 255 of domain, 254 for the whole path. */
const MAX_LOCAL = 64;
const MAX_DOMAIN = 253;
const MAX_ADDRESS = 254;
/** Mailbox ids may be longer than addresses (stores use them for non-account mailboxes too). */
const MAX_MAILBOX_ID = 320;

// Characters that are legal in some quoted local part but only ever serve routing tricks
// (`user%other@`, `host!user@`), header injection or path games in an account name.
const FORBIDDEN_LOCAL = /[\s"\\<>()[\],;:@%!/\x00-\x1f\x7f]/u;
const CONTROL = /[\x00-\x1f\x7f-\x9f]/u;
const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

const utf8 = new TextEncoder();

/** Inputs remembered per cache; past this a cache starts over, so hostile input cannot grow it. */
const REMEMBERED = 4_096;
const domains = new Map<string, string>();
const addresses = new Map<string, string>();

/**
 * Normalising is a pure function that every SMTP command and store lookup calls several times for the
 * same few addresses (regular expressions, Unicode normalisation): valid answers are remembered.
 * Invalid input is not, so it always gets its own error.
 */
function remembered(cache: Map<string, string>, input: string, compute: (input: string) => string): string {
  let value = cache.get(input);
  if (value === undefined) {
    value = compute(input);
    if (cache.size >= REMEMBERED) cache.clear();
    cache.set(input, value);
  }
  return value;
}

function invalid(what: string, value: string, why: string): StoreError {
  const shown = value.length > 80 ? `${value.slice(0, 80)}…` : value;
  return new StoreError("invalid-name", `invalid ${what} ${JSON.stringify(shown)}: ${why}`);
}

// With the u flag a valid pair is one code point, so this matches only unpaired halves.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function hasLoneSurrogate(value: string): boolean {
  return LONE_SURROGATE.test(value);
}

/**
 * Lower-cases a domain and turns an internationalised one into its ASCII (punycode) form, so that
 * the same domain is always stored and compared as one string. Throws "invalid-name".
 */
export function normalizeDomain(input: string): string {
  return remembered(domains, input, domainOnce);
}

function domainOnce(input: string): string {
  let domain = input.trim().toLowerCase();
  if (domain.endsWith(".")) domain = domain.slice(0, -1);
  if (domain.length === 0) throw invalid("domain", input, "empty");
  if (hasLoneSurrogate(domain) || CONTROL.test(domain)) throw invalid("domain", input, "control characters");
  // eslint-disable-next-line no-control-regex
  if (/[^\x00-\x7f]/.test(domain)) {
    const ascii = domainToASCII(domain);
    if (!ascii) throw invalid("domain", input, "not a valid internationalised domain");
    domain = ascii;
  }
  if (domain.length > MAX_DOMAIN) throw invalid("domain", input, `longer than ${MAX_DOMAIN} characters`);
  const labels = domain.split(".");
  if (labels.length < 1 || !labels.every((l) => LABEL.test(l))) {
    throw invalid("domain", input, "labels must be letters, digits and inner hyphens");
  }
  return domain;
}

/** Splits at the last `@`; throws "invalid-name" when there is none. */
export function splitAddress(address: string): { local: string; domain: string } {
  const at = address.lastIndexOf("@");
  if (at <= 0 || at === address.length - 1) throw invalid("address", address, "expected local@domain");
  return { local: address.slice(0, at), domain: address.slice(at + 1) };
}

/**
 * The canonical form of an account or alias address: lower case, then NFC, ASCII domain. Idempotent
 * (stores keep the result and normalise every lookup again). Local parts may be UTF-8 (SMTPUTF8) but
 * not contain characters that only serve source routing or injection. Throws "invalid-name".
 */
export function normalizeAddress(input: string): string {
  return remembered(addresses, input, addressOnce);
}

function addressOnce(input: string): string {
  const trimmed = input.trim();
  if (hasLoneSurrogate(trimmed)) throw invalid("address", input, "not valid Unicode");
  const { local: rawLocal, domain: rawDomain } = splitAddress(trimmed);
  // Case mapping first: lower-casing an NFC string can leave it non-NFC (U+03AA U+0301 → U+03CA U+0301,
  // which composes to U+0390), and a name that normalises differently the second time cannot log in.
  const local = unquoteLocal(rawLocal).toLowerCase().normalize("NFC");
  if (local === "") throw invalid("address", input, "empty local part");
  if (FORBIDDEN_LOCAL.test(local) || CONTROL.test(local)) {
    throw invalid("address", input, "local part has a character that is not allowed");
  }
  if (local.startsWith(".") || local.endsWith(".") || local.includes("..")) {
    throw invalid("address", input, "misplaced dot in local part");
  }
  if (utf8.encode(local).length > MAX_LOCAL) {
    throw invalid("address", input, `local part longer than ${MAX_LOCAL} octets`);
  }
  const address = `${local}@${normalizeDomain(rawDomain)}`;
  if (utf8.encode(address).length > MAX_ADDRESS) {
    throw invalid("address", input, `longer than ${MAX_ADDRESS} octets`);
  }
  return address;
}

/**
 * `"bob"@example.com` is the same mailbox as `bob@example.com` (RFC 5321 4.1.2: a quoted string stands
 * for the characters it spells), so the quotes and escapes go; what is left is then held to the same
 * rules as any local part, so a quoted string cannot smuggle in a space, `@` or `%`.
 */
function unquoteLocal(local: string): string {
  if (local.length < 2 || !local.startsWith('"') || !local.endsWith('"')) return local;
  return local.slice(1, -1).replace(/\\(.)/gsu, "$1");
}

/** Like normalizeAddress, but also accepts a catch-all alias source `@domain`. */
export function normalizeAliasSource(input: string): string {
  const trimmed = input.trim();
  if (trimmed.startsWith("@")) return `@${normalizeDomain(trimmed.slice(1))}`;
  return normalizeAddress(trimmed);
}

/** The domain part of a normalised address or `@domain` source. */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf("@") + 1);
}

const UID = /^[\x21-\x7e]{1,70}$/;

/** True for 1–70 printable ASCII characters, the POP3 UIDL alphabet (RFC 1939). */
export function isValidUid(uid: string): uid is Uid {
  return UID.test(uid);
}

export function assertUid(uid: string): asserts uid is Uid {
  if (!isValidUid(uid)) throw invalid("uid", uid, "a UID is 1–70 printable ASCII characters");
}

/**
 * Mailbox ids are opaque to the contract but must be well-formed text of bounded length without
 * control characters. Stores still have to encode them safely (`../` is a valid id).
 */
export function assertMailboxId(id: string): asserts id is MailboxId {
  if (id.length === 0) throw invalid("mailbox id", id, "empty");
  if (id.length > MAX_MAILBOX_ID) throw invalid("mailbox id", id, `longer than ${MAX_MAILBOX_ID} characters`);
  if (hasLoneSurrogate(id) || CONTROL.test(id)) throw invalid("mailbox id", id, "control characters");
}
