export type TargetName = "smtp" | "submission" | "submissions" | "pop3" | "pop3s";

/** One listener to examine. */
export interface DoctorTarget {
  readonly name: TargetName;
  readonly host: string;
  readonly port: number;
  /** TLS from the first byte (465, 995); otherwise STARTTLS/STLS is expected. */
  readonly implicitTls: boolean;
}

export interface DoctorOptions {
  readonly targets: readonly DoctorTarget[];
  /** The name clients use for this server; the certificate must cover it. Without it the name is not checked. */
  readonly expectedHostname?: string;
  /** PEM certificates to trust instead of the system CAs. Without it a self-signed certificate is reported, not fatal. */
  readonly ca?: string;
  /** Log in with this account: POP3 USER/PASS + STAT (nothing is deleted), submission AUTH PLAIN (nothing is sent). */
  readonly account?: { readonly address: string; readonly password: string };
  /** Per network step (connect, each reply, handshake). Default 10 s. */
  readonly timeoutMs?: number;
  /** Receives every output line, without the trailing newline. */
  readonly out: (line: string) => void;
}

export type CheckStatus = "ok" | "warn" | "fail";

/** One step's verdict, as printed. */
export interface Check {
  /** `pop3 127.0.0.1:2110` */
  readonly target: string;
  /** A short machine-friendly name: connect, greeting, capabilities, starttls, tls, certificate-name, … */
  readonly step: string;
  readonly status: CheckStatus;
  readonly message: string;
  /** The likely cause and what to do, for warnings and failures. */
  readonly hint?: string;
}

export interface DoctorResult {
  /** No check failed (warnings allowed). The CLI exits 0 when true, 1 otherwise. */
  readonly ok: boolean;
  readonly checks: readonly Check[];
}
