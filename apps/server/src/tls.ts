/**
 * The server's certificate: from `[tls]` (re-read on SIGHUP), or in the development setup a
 * self-signed one for localhost and the configured host name, made on first start and kept under the
 * data directory so that clients can pin it across restarts.
 */
import { mkdir, readFile, writeFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { TlsContext, type TlsMaterial } from "@mailroom/transport";
import { ConfigError } from "./errors.js";
import type { ServerConfig } from "./config.js";

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
  /** Where the paths came from, for messages. */
  readonly certOrigin: string;
  readonly keyOrigin: string;
}

export async function readMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const read = async (path: string, origin: string): Promise<string> => {
    try {
      return await readFile(path, "utf8");
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      throw new ConfigError(`${origin}: cannot read ${path}: ${code === "ENOENT" ? "no such file" : String(code ?? error)}`);
    }
  };
  return { cert: await read(files.cert, files.certOrigin), key: await read(files.key, files.keyOrigin) };
}

/** Builds the TLS context, turning a bad certificate or key into a message that names both keys and files. */
export function contextFrom(material: TlsMaterial, files: TlsFiles): TlsContext {
  try {
    return new TlsContext(material);
  } catch (error) {
    throw unusable(files, error);
  }
}

/**
 * Puts a re-read certificate and key (SIGHUP) into `context`; if they are bad, the old ones stay and the
 * error names the keys and files as at start-up, so the log says what to fix.
 */
export function reloadContext(context: TlsContext, material: TlsMaterial, files: TlsFiles): void {
  try {
    context.reload(material);
  } catch (error) {
    throw unusable(files, error);
  }
}

function unusable(files: TlsFiles, error: unknown): ConfigError {
  return new ConfigError(
    `${files.certOrigin} / tls.key: not a usable certificate and key (${files.cert}, ${files.key}): ${describe(error)}`,
  );
}

function describe(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0]!;
}

/** Creates (once) and returns the development certificate's files. */
export async function developmentCertificate(dataDir: string, hostname: string): Promise<TlsFiles> {
  const dir = join(dataDir, ".tls");
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const files = { cert, key, certOrigin: `development certificate ${cert}`, keyOrigin: `development key ${key}` };
  const exists = await readFile(cert).then(
    () => true,
    () => false,
  );
  if (exists) return files;
  const names = [...new Set(["localhost", hostname])];
  const now = new Date();
  // Only the development setup needs a certificate generator; load it only then.
  const { generate } = await import("selfsigned");
  const pems = await generate([{ name: "commonName", value: hostname }], {
    keyType: "ec",
    curve: "P-256",
    algorithm: "sha256",
    notBeforeDate: new Date(now.getTime() - 60_000),
    // 825 days is the longest validity Apple clients accept for a server certificate.
    notAfterDate: new Date(now.getTime() + 825 * 86_400_000),
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
      { name: "extKeyUsage", serverAuth: true },
      {
        name: "subjectAltName",
        altNames: [...names.map((value) => ({ type: 2 as const, value })), { type: 7, ip: "127.0.0.1" }, { type: 7, ip: "::1" }],
      },
    ],
  });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // Key first and both via rename, so a crash never leaves a certificate without its key.
  await writeFile(`${key}.tmp`, pems.private, { mode: 0o600 });
  await rename(`${key}.tmp`, key);
  await writeFile(`${cert}.tmp`, pems.cert, { mode: 0o644 });
  await rename(`${cert}.tmp`, cert);
  return files;
}

/** The TLS files for this configuration, or null when it has none (no STARTTLS, no implicit TLS). */
export async function tlsFiles(config: ServerConfig): Promise<TlsFiles | null> {
  if (config.tls) {
    return { cert: config.tls.cert, key: config.tls.key, certOrigin: config.where("tls.cert"), keyOrigin: config.where("tls.key") };
  }
  if (config.development) return developmentCertificate(config.dataDir, config.hostname);
  return null;
}
