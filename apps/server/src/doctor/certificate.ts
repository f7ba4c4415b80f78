/**
 * Judges the certificate a listener presented, the way a mail client would, but reports instead of
 * refusing: name, dates, chain. Uses node:crypto's X509Certificate, which Node, Bun and Deno all have.
 */
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Reporter } from "./report.js";

const RENEW_WARNING_DAYS = 14;
const DAY_MS = 86_400_000;

const DATE_ERRORS = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID"]);

const CA_HINT = "pass --ca FILE with the certificate (or its CA) to trust it for this check, or install a certificate from a public CA (e.g. Let's Encrypt) so that mail clients accept it";

export interface CertificateContext {
  readonly expectedHostname: string | undefined;
  readonly ca: string | undefined;
  readonly now?: Date;
}

function day(date: Date): string {
  return date.toISOString().slice(0, 10);
}

function caCertificates(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const result: X509Certificate[] = [];
  for (const block of blocks) {
    try {
      result.push(new X509Certificate(block));
    } catch {
      // A broken block in the --ca file only means fewer anchors; the chain verdict says the rest.
    }
  }
  return result;
}

/** Prints the handshake details and the certificate verdicts under the current section. */
export function reportCertificate(socket: TLSSocket, context: CertificateContext, report: Reporter): void {
  const cipher = socket.getCipher();
  report.ok("tls", `TLS established: ${socket.getProtocol() ?? "unknown protocol"}, ${cipher.standardName ?? cipher.name}`);
  const peer = socket.getPeerCertificate(true);
  const raw = (peer as { raw?: Uint8Array }).raw;
  if (!raw || raw.length === 0) {
    report.fail("certificate", "the server presented no certificate", "set [tls] cert and key in the configuration");
    return;
  }
  const cert = new X509Certificate(raw);
  const names = (cert.subjectAltName ?? "").split(/,\s*/).filter((n) => n.length > 0);
  const validFrom = new Date(cert.validFrom);
  const validTo = new Date(cert.validTo);
  const now = context.now ?? new Date();
  report.info(`subject:  ${cert.subject.replace(/\n/g, ", ")}`);
  report.info(`names:    ${names.length > 0 ? names.join(", ") : "(no subjectAltName)"}`);
  report.info(`issuer:   ${cert.issuer.replace(/\n/g, ", ")}`);
  report.info(`valid:    ${day(validFrom)} → ${day(validTo)}`);

  const expected = context.expectedHostname;
  if (expected === undefined) {
    report.warn("certificate-name", "host name not checked (no expected host name given)", "pass --host NAME, the name clients connect to");
  } else {
    const matches = isIP(expected) ? cert.checkIP(expected) !== undefined : cert.checkHost(expected) !== undefined;
    if (matches) report.ok("certificate-name", `certificate matches ${expected}`);
    else {
      report.fail(
        "certificate-name",
        `certificate name mismatch: it does not cover ${expected}`,
        `clients connecting to ${expected} will refuse it; get a certificate whose subjectAltName includes ${expected}, or set hostname to a name it covers`,
      );
    }
  }

  if (now < validFrom) {
    report.fail("certificate-dates", `certificate not yet valid: valid from ${day(validFrom)}`, "check the server's clock, or the certificate's start date");
  } else if (now > validTo) {
    const ago = Math.floor((now.getTime() - validTo.getTime()) / DAY_MS);
    report.fail("certificate-dates", `certificate expired on ${day(validTo)} (${ago} day${ago === 1 ? "" : "s"} ago)`, "renew the certificate and reload the server (SIGHUP)");
  } else {
    const left = Math.floor((validTo.getTime() - now.getTime()) / DAY_MS);
    const text = `certificate valid until ${day(validTo)} (${left} day${left === 1 ? "" : "s"} left)`;
    if (left < RENEW_WARNING_DAYS) report.warn("certificate-dates", text, "renew it soon; is automatic renewal running?");
    else report.ok("certificate-dates", text);
  }

  const selfSigned = cert.checkIssued(cert) && safeVerify(cert);
  const error = socket.authorized ? null : String(socket.authorizationError ?? "UNKNOWN");
  const pinned = context.ca !== undefined && caCertificates(context.ca).some((c) => c.fingerprint256 === cert.fingerprint256);
  // A leaf that is itself in --ca is trusted; runtimes word the remaining date error differently
  // (OpenSSL says CERT_HAS_EXPIRED, Deno's rustls something else), and dates were judged above.
  if (error === null || pinned) {
    report.ok("certificate-chain", `certificate chain trusted${context.ca ? " (by --ca)" : ""}`);
  } else if (DATE_ERRORS.has(error) && !selfSigned) {
    // The dates were reported above; OpenSSL stops at the first problem, so the chain itself is unknown.
  } else if (selfSigned) {
    const status = context.ca ? "fail" : "warn";
    report[status]("certificate-chain", "certificate is self-signed", CA_HINT);
  } else {
    const status = context.ca ? "fail" : "warn";
    report[status]("certificate-chain", `certificate chain not trusted (${error})`, context.ca ? "the --ca file does not contain the issuer of this certificate" : CA_HINT);
  }
}

function safeVerify(cert: X509Certificate): boolean {
  try {
    return cert.verify(cert.publicKey);
  } catch {
    return false;
  }
}
