import { createPrivateKey, X509Certificate } from "node:crypto";
import { createSecureContext, type SecureContext } from "node:tls";

export interface TlsMaterial {
  /** PEM certificate chain. */
  readonly cert: string | Uint8Array;
  /** PEM private key. */
  readonly key: string | Uint8Array;
  /** Lowest protocol offered. Default TLSv1.2 (RFC 8996 retired 1.0 and 1.1). */
  readonly minVersion?: "TLSv1.2" | "TLSv1.3";
  /** OpenSSL cipher list for TLS 1.2; TLS 1.3 suites are always the runtime's modern defaults. */
  readonly ciphers?: string;
}

// Forward-secret AEAD suites only, which is what current guidance (Mozilla "intermediate") allows.
const DEFAULT_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

/**
 * Holds the certificate in use and lets it be replaced (SIGHUP) without touching open sessions:
 * connections that start after `reload` use the new one, running ones keep theirs.
 */
export class TlsContext {
  #context: SecureContext;
  #options: ReturnType<typeof toOptions>;
  readonly #listeners = new Set<() => void>();

  constructor(material: TlsMaterial) {
    this.#options = toOptions(material);
    this.#context = createSecureContext(this.#options);
  }

  /** The context for a new connection. */
  get current(): SecureContext {
    return this.#context;
  }

  /** Options for `tls.createServer`, which some runtimes handle better than a bare context. */
  get serverOptions(): ReturnType<typeof toOptions> {
    return this.#options;
  }

  /** Swaps in new material. Throws (and keeps the old one) if the new key or certificate is bad. */
  reload(material: TlsMaterial): void {
    const options = toOptions(material);
    this.#context = createSecureContext(options);
    this.#options = options;
    for (const listener of this.#listeners) listener();
  }

  /** Called after every successful reload; returns an unsubscribe function. */
  onReload(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

/**
 * Not every runtime's createSecureContext checks its input (Deno accepts anything), so a bad reload
 * would only show up as failed handshakes. Parse both and check that they belong together.
 */
function validate(cert: string | Buffer, key: string | Buffer): void {
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    throw new Error("TLS certificate is not a valid PEM certificate", { cause: error });
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new Error("TLS key is not a valid PEM private key", { cause: error });
  }
  if (!certificate.checkPrivateKey(privateKey)) throw new Error("TLS key does not match the certificate");
}

function toOptions(material: TlsMaterial) {
  const cert = typeof material.cert === "string" ? material.cert : Buffer.from(material.cert);
  const key = typeof material.key === "string" ? material.key : Buffer.from(material.key);
  validate(cert, key);
  return {
    cert,
    key,
    minVersion: material.minVersion ?? "TLSv1.2",
    ciphers: material.ciphers ?? DEFAULT_CIPHERS,
    honorCipherOrder: true,
  } as const;
}
