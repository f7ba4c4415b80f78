import { createHash, randomBytes } from "node:crypto";
import { isValidUid } from "@mailroom/store";

/**
 * Maildir file names. A message file is `<base>[,S=<octets>][,W=<octets>][:2,<flags>]`: the base is
 * unique and never changes; mail readers rename files only to change the flags after `:2,`, and
 * Dovecot reads `S=` (file size) and `W=` (size with CRLF line ends) to avoid a stat.
 *
 * Bases written by Mailroom look like `<sec>.M<usec>P<pid>Q<n>R<16 hex>.<host>`: the fields of the
 * Maildir spec plus an `R` random part, which no other delivery agent writes and which therefore also
 * tells that the octets are exactly what a Mailroom client sent. A message appended with an explicit
 * UID has `.U=<escaped uid>` in place of the host.
 */

export interface ParsedName {
  readonly name: string;
  readonly base: string;
  /** `S=`: the file's size, when the name carries it. */
  readonly size: number | undefined;
  /** `W=`: the size with bare LF turned into CRLF. */
  readonly crlfSize: number | undefined;
  /** The letters after `:2,` (empty in new/ or without info). */
  readonly flags: string;
  /** Written by Mailroom: read as is, never converted. */
  readonly ours: boolean;
  /** Arrival order keys taken from the name. */
  readonly sec: number;
  readonly usec: number;
  readonly seq: number;
}

const OURS = /^\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\./;
const EXPLICIT = /^\d+\.M\d+P\d+Q\d+R[0-9a-f]{16}\.U=(.+)$/;
const MAX_BASE = 70;

export function parseName(name: string): ParsedName | null {
  if (name.length === 0 || name.startsWith(".")) return null;
  const colon = name.indexOf(":");
  const left = colon < 0 ? name : name.slice(0, colon);
  const info = colon < 0 ? "" : name.slice(colon + 1);
  const fields = left.split(",");
  const base = fields[0]!;
  if (base.length === 0) return null;
  let size: number | undefined;
  let crlfSize: number | undefined;
  for (const field of fields.slice(1)) {
    const m = /^([SW])=(\d{1,15})$/.exec(field);
    if (!m) continue;
    if (m[1] === "S") size = Number(m[2]);
    else crlfSize = Number(m[2]);
  }
  const flags = info.startsWith("2,") ? info.slice(2) : "";
  const sec = Number(/^(\d+)/.exec(base)?.[1] ?? 0);
  const usec = Number(/M(\d+)/.exec(base)?.[1] ?? 0);
  const seq = Number(/Q(\d+)/.exec(base)?.[1] ?? 0);
  return { name, base, size, crlfSize, flags, ours: OURS.test(base), sec, usec, seq };
}

/** Arrival order: delivery time from the name, then the per-process counter, then the name. */
export function compareArrival(a: ParsedName, b: ParsedName): number {
  return a.sec - b.sec || a.usec - b.usec || a.seq - b.seq || (a.base < b.base ? -1 : a.base > b.base ? 1 : 0);
}

const ESCAPES: Readonly<Record<string, string>> = { "\\": "\\\\", "/": "\\s", ":": "\\c", ",": "\\m" };
const UNESCAPES: Readonly<Record<string, string>> = { "\\": "\\", s: "/", c: ":", m: "," };

/** Two characters at most per UID character, so the longest name stays well under NAME_MAX. */
export function escapeUid(uid: string): string {
  return uid.replace(/[\\/:,]/g, (c) => ESCAPES[c]!);
}

export function unescapeUid(text: string): string | null {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const next = UNESCAPES[text[++i] ?? ""];
    if (next === undefined) return null;
    out += next;
  }
  return out;
}

/**
 * The UID of a base name: the explicit UID if one was encoded, else the base itself when it is a valid
 * POP3 UIDL, else a stable hash of it (foreign names may be long or contain other characters).
 */
export function uidOfBase(base: string): string {
  const explicit = EXPLICIT.exec(base);
  if (explicit) {
    const uid = unescapeUid(explicit[1]!);
    if (uid !== null && isValidUid(uid)) return uid;
  }
  if (isValidUid(base)) return base;
  return `H${createHash("sha256").update(base).digest("hex").slice(0, 40)}`;
}

/** Hostnames go into names with the characters that would break parsing escaped (Maildir spec style). */
export function sanitizeHost(host: string): string {
  return host.replace(/[^\x21-\x7e]|[/:,\\=]/g, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0x7e || code < 0x21 ? "_" : `\\${code.toString(8).padStart(3, "0")}`;
  });
}

let counter = 0;
let lastMicros = 0;
const PID = String(process.pid);
let hostFor = "";
let hostPart = "";
// Random octets are drawn in bulk: one call per 512 names instead of one per message.
let randomPool = randomBytes(0);
let randomAt = 0;

function randomHex8(): string {
  if (randomAt + 8 > randomPool.length) {
    randomPool = randomBytes(8 * 512);
    randomAt = 0;
  }
  const hex = randomPool.toString("hex", randomAt, randomAt + 8);
  randomAt += 8;
  return hex;
}

function nowMicros(): number {
  // Date.now has millisecond resolution; performance.now supplies the microseconds within it.
  let micros = Date.now() * 1000 + (Math.floor(performance.now() * 1000) % 1000);
  if (micros <= lastMicros) micros = lastMicros + 1;
  lastMicros = micros;
  return micros;
}

/** A fresh base, unique across processes and hosts; with `uid` it encodes that UID. */
export function newBase(host: string, uid?: string): string {
  const micros = nowMicros();
  const sec = Math.floor(micros / 1_000_000);
  const usec = micros % 1_000_000;
  counter = (counter + 1) % 1_000_000_000;
  const head = `${sec}.M${usec}P${PID}Q${counter}R${randomHex8()}.`;
  if (uid !== undefined) return `${head}U=${escapeUid(uid)}`;
  if (host !== hostFor) {
    hostFor = host;
    hostPart = sanitizeHost(host);
  }
  // Keep generated bases within the UIDL limit so the UID is the base itself.
  const room = Math.max(1, MAX_BASE - head.length);
  return head + (hostPart.slice(0, room) || "h");
}

/** `<base>,S=<size>,W=<crlfSize>` plus `:2,<flags>` for cur/. */
export function messageName(base: string, size: number, crlfSize: number, flags: string | null): string {
  const left = `${base},S=${size},W=${crlfSize}`;
  return flags === null ? left : `${left}:2,${flags}`;
}

/** The name with flag `S` (seen) added, for the move to cur/. */
export function withSeenFlag(parsed: ParsedName): string {
  const colon = parsed.name.indexOf(":");
  const left = colon < 0 ? parsed.name : parsed.name.slice(0, colon);
  if (parsed.flags.includes("S")) return colon < 0 ? `${left}:2,S` : parsed.name;
  const flags = [...parsed.flags, "S"].sort().join("");
  return `${left}:2,${flags}`;
}
