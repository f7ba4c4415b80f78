import type { Command, ParseResult, Params, Path } from "./commands.js";

/**
 * Pure parsing: one command line (without its line ending) to a typed Command. No I/O, no state,
 * so it can be tested with tables and with input split at every byte.
 */

const ATEXT = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\u{10ffff}]$/u;
const DOMAIN_CHAR = /^[A-Za-z0-9\-\u0080-\u{10ffff}]$/u;
const KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/;
// esmtp-value: any printable ASCII except "=" and space (RFC 5321 4.1.2); UTF-8 for SMTPUTF8 clients.
const VALUE = /^[\x21-\x3c\x3e-\x7e\u0080-\u{10ffff}]+$/u;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

const fail = (error: "unknown" | "syntax", message: string): ParseResult => ({ ok: false, error, message });
const ok = (command: Command): ParseResult => ({ ok: true, command });

export function parseCommand(line: string): ParseResult {
  if (CONTROL.test(line)) return fail("syntax", "control characters in command");
  const space = line.indexOf(" ");
  const verb = (space < 0 ? line : line.slice(0, space)).toUpperCase();
  const rest = space < 0 ? "" : line.slice(space + 1);
  const arg = rest.trim();
  switch (verb) {
    case "EHLO":
    case "HELO": {
      if (arg === "") return fail("syntax", `${verb} needs a domain`);
      const domain = arg.split(" ")[0] ?? arg;
      return ok({ verb, domain });
    }
    case "MAIL":
      return parsePathCommand("MAIL", "FROM:", rest);
    case "RCPT":
      return parsePathCommand("RCPT", "TO:", rest);
    case "DATA":
    case "RSET":
    case "QUIT":
    case "STARTTLS":
      return arg === "" ? ok({ verb }) : fail("syntax", `${verb} takes no parameters`);
    case "NOOP":
    case "EXPN":
      return ok({ verb });
    case "VRFY":
      return arg === "" ? fail("syntax", "VRFY needs an argument") : ok({ verb, argument: arg });
    case "HELP":
      return ok({ verb, argument: arg });
    case "AUTH": {
      const parts = arg.split(" ").filter((p) => p !== "");
      if (parts.length < 1 || parts.length > 2) return fail("syntax", "AUTH mechanism [initial-response]");
      return ok({ verb, mechanism: parts[0]!.toUpperCase(), initial: parts[1] ?? null });
    }
    case "BDAT": {
      const parts = arg.split(" ").filter((p) => p !== "");
      const size = parts[0];
      if (size === undefined || !/^\d{1,15}$/.test(size)) return fail("syntax", "BDAT chunk-size [LAST]");
      if (parts.length > 2 || (parts.length === 2 && parts[1]!.toUpperCase() !== "LAST")) {
        return fail("syntax", "BDAT chunk-size [LAST]");
      }
      return ok({ verb, size: Number(size), last: parts.length === 2 });
    }
    default:
      return fail("unknown", "command not recognized");
  }
}

function parsePathCommand(verb: "MAIL" | "RCPT", keyword: string, rest: string): ParseResult {
  if (rest.slice(0, keyword.length).toUpperCase() !== keyword) return fail("syntax", `expected ${verb} ${keyword}<address>`);
  // Many clients put a space after the colon; RFC 5321 does not allow it, but refusing helps nobody.
  const text = rest.slice(keyword.length).replace(/^ +/, "");
  if (!text.startsWith("<")) return fail("syntax", "address must be in angle brackets");
  const parsed = parsePath(text, verb === "MAIL");
  if (typeof parsed === "string") return fail("syntax", parsed);
  const params = parseParams(text.slice(parsed.end));
  if (typeof params === "string") return fail("syntax", params);
  return ok({ verb, path: parsed.path, params });
}

/** `<local@domain>` in plain ASCII without quotes, literals or source routes: nearly every real path. */
const PLAIN_PATH = /^<([A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,256})@([A-Za-z0-9\-.]{1,255})>/;

/** Parses `<...>` at the start of `text`. Returns the path and where it ended, or an error text. */
export function parsePath(text: string, allowNull: boolean): { path: Path; end: number } | string {
  // One regular expression for the common case (the general parser below cost ~4 µs per path in
  // profiles); anything it does not match, or whose domain it would have to judge, goes the long way.
  const plain = PLAIN_PATH.exec(text);
  if (plain !== null) {
    const local = plain[1]!;
    const domain = plain[2]!;
    if (!domain.startsWith(".") && !domain.endsWith(".") && !domain.includes("..")) {
      return { path: { address: `${local}@${domain}`, local, domain, utf8: false }, end: plain[0].length };
    }
  }
  return parseAnyPath(text, allowNull);
}

/** The general path parser (exported for the property test that holds the short cut to it). */
export function parseAnyPath(text: string, allowNull: boolean): { path: Path; end: number } | string {
  const chars = Array.from(text);
  let i = 1;
  // Offsets in `text` are needed for the parameters, so count UTF-16 units as we go.
  let offset = 1;
  const next = (): string | undefined => {
    const c = chars[i++];
    if (c !== undefined) offset += c.length;
    return c;
  };
  const peek = (): string | undefined => chars[i];

  if (peek() === ">") {
    next();
    if (!allowNull) return "empty address";
    return { path: { address: "", local: "", domain: "", utf8: false }, end: offset };
  }
  // A source route (`<@a,@b:user@c>`) is obsolete; RFC 5321 C says to accept and ignore it.
  if (peek() === "@") {
    while (peek() !== undefined && peek() !== ":" && peek() !== ">") next();
    if (next() !== ":") return "bad source route";
  }
  let local = "";
  if (peek() === '"') {
    local += next();
    for (;;) {
      const c = next();
      if (c === undefined) return "unterminated quoted string";
      local += c;
      if (c === "\\") {
        const escaped = next();
        if (escaped === undefined) return "unterminated quoted string";
        local += escaped;
      } else if (c === '"') break;
    }
  } else {
    while (peek() !== undefined && (ATEXT.test(peek()!) || peek() === ".")) local += next();
  }
  if (local === "" || local.length > 256) return "bad local part";
  if (peek() === ">" && isPostmaster(local)) {
    next();
    return { path: { address: local, local, domain: "", utf8: false }, end: offset };
  }
  if (next() !== "@") return "expected local@domain";
  let domain = "";
  if (peek() === "[") {
    while (peek() !== undefined && peek() !== "]") domain += next();
    if (peek() !== "]") return "unterminated address literal";
    domain += next();
  } else {
    while (peek() !== undefined && (DOMAIN_CHAR.test(peek()!) || peek() === ".")) domain += next();
    if (domain === "" || domain.startsWith(".") || domain.endsWith(".") || domain.includes("..")) return "bad domain";
  }
  if (domain.length > 255) return "domain too long";
  if (next() !== ">") return "expected > after address";
  const address = `${local}@${domain}`;
  // eslint-disable-next-line no-control-regex
  return { path: { address, local, domain, utf8: /[^\x00-\x7f]/.test(address) }, end: offset };
}

/**
 * The local part names the postmaster: in any letter case (RFC 5321 4.5.1), and also quoted, since a
 * quoted string that spells the same characters is the same local part (RFC 5321 4.1.2), so
 * `"PostMaster"` and `"post\master"` count and `"post master"` does not.
 */
export function isPostmaster(local: string): boolean {
  // Only the general parser keeps quotes, and then the local part is exactly one quoted string.
  const name = local.startsWith('"') ? local.slice(1, -1).replace(/\\(.)/gsu, "$1") : local;
  return name.toLowerCase() === "postmaster";
}

function parseParams(text: string): Params | string {
  const params = new Map<string, string | true>();
  if (text === "") return params;
  if (!text.startsWith(" ")) return "expected a space before parameters";
  for (const part of text.split(" ")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const key = (eq < 0 ? part : part.slice(0, eq)).toUpperCase();
    if (!KEYWORD.test(key)) return `bad parameter ${part.slice(0, 40)}`;
    if (eq < 0) params.set(key, true);
    else {
      const value = part.slice(eq + 1);
      if (!VALUE.test(value)) return `bad parameter value for ${key}`;
      params.set(key, value);
    }
  }
  return params;
}

/**
 * Splits a byte stream into command lines. A line ends at LF (a CR before it is dropped): RFC 5321
 * wants CRLF, but accepting a bare LF on command lines is harmless and common. A line longer than
 * `maxLine` octets (with the line ending) is reported as too long once, as soon as it crosses the
 * limit (a client that never sends LF still gets its answer), and is then swallowed up to its end,
 * so memory stays bounded whatever the client sends. `discarding` tells how much was swallowed.
 */
export class LineReader {
  #parts: Uint8Array[] = [];
  #length = 0;
  #overflow = false;
  /** "too-long" was already given out for the line being swallowed. */
  #reported = false;
  #discarded = 0;

  constructor(public maxLine: number) {}

  /** Octets of an over-long line swallowed so far, or 0 when no line is being swallowed. */
  get discarding(): number {
    return this.#overflow ? this.#discarded : 0;
  }

  /** Bytes held for an unfinished line. */
  get pending(): number {
    return this.#length;
  }

  /**
   * Takes bytes from `input` up to and including the first LF. Returns the line (bytes without the
   * line ending), "too-long" (once per over-long line, possibly before its LF arrived), or null when
   * `input` ended first or the end of an already reported line was swallowed, and how many octets
   * were consumed.
   */
  take(input: Uint8Array, maxLine = this.maxLine): { line: Uint8Array | "too-long" | null; used: number } {
    const lf = input.indexOf(0x0a);
    const used = lf < 0 ? input.length : lf + 1;
    const piece = input.subarray(0, used);
    if (!this.#overflow) {
      if (this.#length + piece.length > maxLine) {
        // Allow exactly maxLine octets including CRLF; anything longer is swallowed.
        const endsHere = lf >= 0;
        const lineLength = this.#length + piece.length;
        if (!(endsHere && lineLength <= maxLine)) {
          this.#overflow = true;
          this.#parts = [];
          this.#length = 0;
        }
      }
      if (!this.#overflow) {
        this.#parts.push(piece.slice());
        this.#length += piece.length;
      }
    }
    if (this.#overflow) this.#discarded += piece.length;
    if (lf < 0) {
      if (this.#overflow && !this.#reported) {
        this.#reported = true;
        return { line: "too-long", used };
      }
      return { line: null, used };
    }
    if (this.#overflow) {
      const reported = this.#reported;
      this.#overflow = false;
      this.#reported = false;
      this.#discarded = 0;
      return { line: reported ? null : "too-long", used };
    }
    const whole = concat(this.#parts, this.#length);
    this.#parts = [];
    this.#length = 0;
    let end = whole.length - 1;
    if (end > 0 && whole[end - 1] === 0x0d) end--;
    return { line: whole.subarray(0, end), used };
  }

  /**
   * Whether the line being read (the octets held for it, then `input`) starts with `prefix`, ASCII
   * letters in any case. False while an over-long line is swallowed, or when too little has arrived.
   */
  startsWith(input: Uint8Array, prefix: string): boolean {
    if (this.#overflow) return false;
    let at = 0;
    const match = (part: Uint8Array): boolean => {
      for (let i = 0; i < part.length && at < prefix.length; i++, at++) {
        if (lowerAscii(part[i]!) !== lowerAscii(prefix.charCodeAt(at))) return false;
      }
      return true;
    };
    for (const part of this.#parts) if (!match(part)) return false;
    return match(input) && at === prefix.length;
  }

  reset(): void {
    this.#parts = [];
    this.#length = 0;
    this.#overflow = false;
    this.#reported = false;
    this.#discarded = 0;
  }
}

function lowerAscii(octet: number): number {
  return octet >= 0x41 && octet <= 0x5a ? octet | 0x20 : octet;
}

export function concat(parts: readonly Uint8Array[], length?: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(length ?? parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
