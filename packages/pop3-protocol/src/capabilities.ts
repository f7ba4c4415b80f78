import { SASL_MECHANISMS } from "./auth.js";

export interface CapabilityInput {
  /** STLS can be started now (TLS configured, connection not yet secure, AUTHORIZATION state). */
  readonly stls: boolean;
  /** Password logins are accepted on this connection now. */
  readonly plaintextAuth: boolean;
  readonly expireDays: number | null;
  readonly loginDelaySeconds: number;
}

/**
 * The RFC 2449 CAPA list. Login methods that would be refused right now are left out (as RFC 2595
 * suggests), so a client sees STLS and knows to upgrade first; after STLS it must ask CAPA again.
 */
export function capabilityLines(input: CapabilityInput): string[] {
  const lines = ["TOP", "UIDL"];
  if (input.plaintextAuth) lines.push("USER", `SASL ${SASL_MECHANISMS.join(" ")}`);
  lines.push("RESP-CODES", "AUTH-RESP-CODE", "PIPELINING");
  lines.push(`EXPIRE ${input.expireDays === null ? "NEVER" : String(input.expireDays)}`);
  if (input.loginDelaySeconds > 0) lines.push(`LOGIN-DELAY ${input.loginDelaySeconds}`);
  if (input.stls) lines.push("STLS");
  lines.push("IMPLEMENTATION Mailroom");
  return lines;
}
