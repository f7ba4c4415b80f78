import { Buffer } from "node:buffer";

/**
 * SASL PLAIN and LOGIN (RFC 4616, draft-murchison-sasl-login) for AUTH (RFC 4954). Pure decoding: the
 * session asks for the missing parts and checks the password.
 */
export type Mechanism = "PLAIN" | "LOGIN";
export const MECHANISMS: readonly Mechanism[] = ["PLAIN", "LOGIN"];

export const isMechanism = (name: string): name is Mechanism => (MECHANISMS as readonly string[]).includes(name);

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decodes one base64 response; null when it is not valid base64 or not UTF-8. */
export function decodeResponse(text: string): string | null {
  if (text.length % 4 !== 0 || !BASE64.test(text)) return null;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(text, "base64"));
  } catch {
    return null;
  }
}

/** PLAIN: `authzid NUL authcid NUL passwd`. An authzid other than the login is refused (no proxy auth). */
export function parsePlain(decoded: string): { login: string; password: string } | null {
  const parts = decoded.split("\u0000");
  if (parts.length !== 3) return null;
  const [authzid, login, password] = parts as [string, string, string];
  if (login === "" || password === "") return null;
  if (authzid !== "" && authzid.toLowerCase() !== login.toLowerCase()) return null;
  return { login, password };
}

export const LOGIN_USERNAME = Buffer.from("Username:").toString("base64");
export const LOGIN_PASSWORD = Buffer.from("Password:").toString("base64");

/** What the session does next in an AUTH exchange. */
export type AuthStep =
  /** Send `334 <challenge>` and wait for the next line. */
  | { readonly kind: "challenge"; readonly challenge: string; readonly mechanism: Mechanism; readonly login: string | null }
  /** Check these credentials. */
  | { readonly kind: "verify"; readonly login: string; readonly password: string }
  /** Stop: cancelled by "*", undecodable, or malformed credentials. */
  | { readonly kind: "fail"; readonly why: "cancelled" | "decode" | "invalid" };

/** The AUTH command itself, with its optional initial response. */
export function authStart(mechanism: Mechanism, initial: string | null): AuthStep {
  if (initial === null) {
    return { kind: "challenge", challenge: mechanism === "PLAIN" ? "" : LOGIN_USERNAME, mechanism, login: null };
  }
  return authContinue(mechanism, null, initial);
}

/** One client response line; `login` is what LOGIN collected so far. */
export function authContinue(mechanism: Mechanism, login: string | null, line: string): AuthStep {
  const text = line.trim();
  if (text === "*") return { kind: "fail", why: "cancelled" };
  // "=" is the empty initial response (RFC 4954 4).
  const decoded = text === "=" ? "" : decodeResponse(text);
  if (decoded === null) return { kind: "fail", why: "decode" };
  if (mechanism === "LOGIN") {
    if (login === null) {
      return decoded === "" ? { kind: "fail", why: "invalid" } : { kind: "challenge", challenge: LOGIN_PASSWORD, mechanism, login: decoded };
    }
    return decoded === "" ? { kind: "fail", why: "invalid" } : { kind: "verify", login, password: decoded };
  }
  const credentials = parsePlain(decoded);
  return credentials ? { kind: "verify", ...credentials } : { kind: "fail", why: "invalid" };
}
