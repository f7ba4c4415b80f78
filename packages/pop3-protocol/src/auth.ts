import { Buffer } from "node:buffer";
import { authenticate, type Account, type Directory, type LoginCache, type LoginThrottle } from "@mailroom/store";

/**
 * SASL PLAIN (RFC 4616) and LOGIN for AUTH (RFC 5034), as pure steps the session drives, plus the
 * password check shared with USER/PASS. Both mechanisms carry the password itself, so they fall under
 * the same "plaintext needs TLS" rule as PASS. SCRAM is not offered: the directory keeps only scrypt
 * hashes, not the salted SCRAM secret the mechanism needs.
 */

export const SASL_MECHANISMS = ["PLAIN", "LOGIN"] as const;

export type SaslStep =
  /** Send `+ challenge` (base64) and feed the client's next line to `next`. */
  | { readonly kind: "challenge"; readonly challenge: string; readonly next: (response: string) => SaslStep }
  | { readonly kind: "credentials"; readonly login: string; readonly password: string }
  | { readonly kind: "invalid"; readonly message: string };

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 (RFC 4648, padded); "=" alone is the empty initial response of RFC 5034. */
function decode(text: string): string | null {
  if (text === "=") return "";
  if (!BASE64.test(text)) return null;
  return Buffer.from(text, "base64").toString("utf8");
}

const encode = (text: string): string => Buffer.from(text, "utf8").toString("base64");
const invalid = (message: string): SaslStep => ({ kind: "invalid", message });

function plain(response: string): SaslStep {
  const decoded = decode(response);
  if (decoded === null) return invalid("invalid base64 in response");
  const parts = decoded.split("\0");
  if (parts.length !== 3) return invalid("malformed PLAIN response");
  const [authzid, authcid, password] = parts as [string, string, string];
  // Acting for another user (an authorisation identity) is not a feature of this server.
  if (authzid !== "" && authzid !== authcid) return invalid("authorization identity not permitted");
  return { kind: "credentials", login: authcid, password };
}

function loginPassword(login: string): SaslStep {
  return {
    kind: "challenge",
    challenge: encode("Password:"),
    next: (response) => {
      const password = decode(response);
      return password === null ? invalid("invalid base64 in response") : { kind: "credentials", login, password };
    },
  };
}

function loginUser(response: string): SaslStep {
  const login = decode(response);
  return login === null ? invalid("invalid base64 in response") : loginPassword(login);
}

/** The first step of a mechanism, or null when the mechanism is not offered. */
export function beginSasl(mechanism: string, initialResponse: string | null): SaslStep | null {
  switch (mechanism) {
    case "PLAIN":
      return initialResponse === null ? { kind: "challenge", challenge: "", next: plain } : plain(initialResponse);
    case "LOGIN":
      return initialResponse === null
        ? { kind: "challenge", challenge: encode("Username:"), next: loginUser }
        : loginUser(initialResponse);
    default:
      return null;
  }
}

export type LoginOutcome =
  | { readonly kind: "ok"; readonly account: Account }
  | { readonly kind: "bad-credentials" }
  | { readonly kind: "throttled" };

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What a login check uses of the server's context. */
export interface LoginContext {
  readonly store: { readonly directory: Directory };
  readonly throttle: LoginThrottle;
  readonly loginCache: LoginCache;
}

/**
 * Checks a password with the throttle around it. Unknown user and wrong password cost the same and
 * answer the same (`authenticate` equalises the work); the throttle's delay comes before the check,
 * so a guesser can't learn the answer any sooner. Store failures are thrown.
 */
export async function checkLogin(ctx: LoginContext, client: string, login: string, password: string): Promise<LoginOutcome> {
  const { throttle } = ctx;
  const delay = throttle.delayFor(client, login);
  if (delay === Infinity) return { kind: "throttled" };
  if (delay > 0) await sleep(delay);
  const account = await authenticate(ctx.store.directory, login, password, ctx.loginCache);
  if (!account) {
    throttle.failure(client, login);
    return { kind: "bad-credentials" };
  }
  throttle.success(client, login);
  return { kind: "ok", account };
}
