import type { Command } from "./commands.js";

/**
 * Bytes to commands, without any I/O or state: `takeLine` finds one line in what arrived so far and
 * `parseCommand` turns its text into a typed command.
 */

/** RFC 2449: a command line, CRLF included, is at most 255 octets. */
export const MAX_COMMAND_OCTETS = 255;

export type LineResult =
  | { readonly kind: "needs-more" }
  | { readonly kind: "too-long" }
  /** `consumed` counts the line terminator too. */
  | { readonly kind: "line"; readonly text: string; readonly consumed: number };

export type ParseResult =
  | { readonly kind: "command"; readonly command: Command }
  | { readonly kind: "error"; readonly message: string };

const LF = 0x0a;
const CR = 0x0d;
const decoder = new TextDecoder();

/**
 * The first line of `input`. CRLF ends a line; a bare LF is accepted too, because some clients send it.
 * A line longer than `maxOctets` (terminator included) is "too-long" as soon as that is certain, so a
 * client can't make the server buffer an endless line.
 */
export function takeLine(input: Uint8Array, maxOctets = MAX_COMMAND_OCTETS): LineResult {
  const lf = input.indexOf(LF);
  if (lf === -1) return input.length >= maxOctets ? { kind: "too-long" } : { kind: "needs-more" };
  if (lf + 1 > maxOctets) return { kind: "too-long" };
  const end = lf > 0 && input[lf - 1] === CR ? lf - 1 : lf;
  return { kind: "line", text: decoder.decode(input.subarray(0, end)), consumed: lf + 1 };
}

/**
 * Decimal digits only; leading zeros are allowed, as in any number (Dovecot reads them the same way).
 * A value past the largest we handle is refused rather than read as something else.
 */
const NUMBER = /^\d{1,64}$/;
const LARGEST = 999_999_999;

const error = (message: string): ParseResult => ({ kind: "error", message });
const ok = (command: Command): ParseResult => ({ kind: "command", command });

/** Parses one command line (without its terminator). Keywords are case-insensitive. */
export function parseCommand(line: string): ParseResult {
  const space = line.indexOf(" ");
  const keyword = (space === -1 ? line : line.slice(0, space)).toUpperCase();
  // PASS takes the rest of the line verbatim: RFC 1939 lets a password contain spaces.
  const rest = space === -1 ? "" : line.slice(space + 1);
  const args = rest.split(" ").filter((a) => a !== "");
  const count = (min: number, max: number): boolean => args.length >= min && args.length <= max;
  const number = (i: number): number | null => {
    const arg = args[i];
    if (arg === undefined || !NUMBER.test(arg)) return null;
    const value = Number(arg);
    return value <= LARGEST ? value : null;
  };
  const noArgs = (command: Command): ParseResult =>
    args.length === 0 ? ok(command) : error(`${keyword} takes no arguments`);
  const optionalMsg = (name: "LIST" | "UIDL"): ParseResult => {
    if (!count(0, 1)) return error(`usage: ${name} [message-number]`);
    if (args.length === 0) return ok({ name, msg: null });
    const msg = number(0);
    return msg === null ? error("invalid message number") : ok({ name, msg });
  };
  const requiredMsg = (name: "RETR" | "DELE"): ParseResult => {
    const msg = count(1, 1) ? number(0) : null;
    return msg === null ? error(`usage: ${name} message-number`) : ok({ name, msg });
  };

  switch (keyword) {
    case "":
      return error("empty command");
    case "USER":
      return count(1, 1) ? ok({ name: "USER", user: args[0]! }) : error("usage: USER name");
    case "PASS":
      return rest === "" ? error("usage: PASS password") : ok({ name: "PASS", password: rest });
    case "APOP":
      return ok({ name: "APOP" });
    case "AUTH":
      if (!count(0, 2)) return error("usage: AUTH mechanism [initial-response]");
      return ok({ name: "AUTH", mechanism: args[0]?.toUpperCase() ?? null, initialResponse: args[1] ?? null });
    case "CAPA":
    case "STLS":
    case "QUIT":
    case "STAT":
    case "NOOP":
    case "RSET":
      return noArgs({ name: keyword });
    case "LIST":
    case "UIDL":
      return optionalMsg(keyword);
    case "RETR":
    case "DELE":
      return requiredMsg(keyword);
    case "TOP": {
      const msg = count(2, 2) ? number(0) : null;
      const lines = count(2, 2) ? number(1) : null;
      return msg === null || lines === null ? error("usage: TOP message-number lines") : ok({ name: "TOP", msg, lines });
    }
    default:
      return error("unknown command");
  }
}
