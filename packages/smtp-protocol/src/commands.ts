/** A parsed forward or reverse path. `address` is "" for the null reverse path `<>`. */
export interface Path {
  /** `local@domain` as the client wrote it (quotes kept), without a source route. */
  readonly address: string;
  readonly local: string;
  readonly domain: string;
  /** The address has non-ASCII characters (needs SMTPUTF8). */
  readonly utf8: boolean;
}

export type Params = ReadonlyMap<string, string | true>;

export type Command =
  | { readonly verb: "EHLO" | "HELO"; readonly domain: string }
  | { readonly verb: "MAIL"; readonly path: Path; readonly params: Params }
  | { readonly verb: "RCPT"; readonly path: Path; readonly params: Params }
  | { readonly verb: "DATA" | "RSET" | "NOOP" | "QUIT" | "STARTTLS" | "EXPN" }
  | { readonly verb: "VRFY" | "HELP"; readonly argument: string }
  | { readonly verb: "AUTH"; readonly mechanism: string; readonly initial: string | null }
  | { readonly verb: "BDAT"; readonly size: number; readonly last: boolean };

export type Verb = Command["verb"];

export type ParseResult =
  | { readonly ok: true; readonly command: Command }
  | { readonly ok: false; readonly error: "unknown" | "syntax"; readonly message: string };
