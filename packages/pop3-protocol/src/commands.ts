/**
 * Every command the server understands, as a typed union. Message numbers are the 1-based positions of
 * the login snapshot; 0 is representable so that the session, not the parser, says "no such message".
 */
export type Command =
  | { readonly name: "USER"; readonly user: string }
  | { readonly name: "PASS"; readonly password: string }
  | { readonly name: "APOP" }
  | { readonly name: "AUTH"; readonly mechanism: string | null; readonly initialResponse: string | null }
  | { readonly name: "CAPA" }
  | { readonly name: "STLS" }
  | { readonly name: "QUIT" }
  | { readonly name: "STAT" }
  | { readonly name: "NOOP" }
  | { readonly name: "RSET" }
  | { readonly name: "LIST"; readonly msg: number | null }
  | { readonly name: "UIDL"; readonly msg: number | null }
  | { readonly name: "RETR"; readonly msg: number }
  | { readonly name: "DELE"; readonly msg: number }
  | { readonly name: "TOP"; readonly msg: number; readonly lines: number };

export type CommandName = Command["name"];

/** The states in which the session reads commands (UPDATE only finishes the QUIT). */
export type CommandState = "authorization" | "transaction";

/** RFC 1939 and its extensions: which command may be given in which state. */
export const ALLOWED: Readonly<Record<CommandState, ReadonlySet<CommandName>>> = {
  authorization: new Set<CommandName>(["USER", "PASS", "APOP", "AUTH", "CAPA", "STLS", "QUIT"]),
  transaction: new Set<CommandName>(["STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "CAPA", "QUIT"]),
};
