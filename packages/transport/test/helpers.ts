import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface Cert {
  readonly cert: string;
  readonly key: string;
  readonly fingerprint256: string;
}

/** A fresh self-signed certificate for localhost, made with the openssl CLI in a temp dir. */
export async function makeCert(cn = "localhost"): Promise<Cert> {
  const dir = await mkdtemp(join(tmpdir(), "mailroom-transport-"));
  try {
    const keyPath = join(dir, "key.pem");
    const certPath = join(dir, "cert.pem");
    await run(
      "openssl",
      [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${cn}`, "-days", "1",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", keyPath, "-out", certPath,
      ],
      { timeout: 30_000 },
    );
    const cert = await readFile(certPath, "utf8");
    const key = await readFile(keyPath, "utf8");
    return { cert, key, fingerprint256: new X509Certificate(cert).fingerprint256 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A test client that reads CRLF lines from a plain or TLS socket. Reads time out instead of hanging the
 * suite, and `closed` resolves when the server hangs up.
 */
export class LineClient {
  #buffer = "";
  #waiters: Array<() => void> = [];
  #ended = false;
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket | TLSSocket) {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.#buffer += chunk;
      this.#wake();
    });
    socket.on("error", () => {});
    this.closed = new Promise((resolve) => socket.once("close", () => {
      this.#ended = true;
      this.#wake();
      resolve();
    }));
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Everything received and not yet read as a line. */
  get pending(): string {
    return this.#buffer;
  }

  async readLine(timeoutMs = 5_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.#buffer.indexOf("\r\n");
      if (end >= 0) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        return line;
      }
      if (this.#ended) throw new Error(`connection closed; unread: ${JSON.stringify(this.#buffer)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no line within ${timeoutMs} ms; unread: ${JSON.stringify(this.#buffer)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  write(data: string): void {
    this.socket.write(data);
  }

  close(): void {
    this.socket.destroy();
  }
}

export function connectPlain(port: number, localAddress?: string): Promise<LineClient> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: "127.0.0.1", port, ...(localAddress ? { localAddress } : {}) }, () =>
      resolve(new LineClient(socket)),
    );
    socket.once("error", reject);
  });
}

export function connectTls(port: number, ca: string | string[], localAddress?: string): Promise<LineClient> {
  return new Promise((resolve, reject) => {
    const options = { host: "127.0.0.1", port, ca, servername: "localhost", ...(localAddress ? { localAddress } : {}) };
    const socket = tlsConnect(options, () => resolve(new LineClient(socket)));
    socket.once("error", reject);
  });
}

/** Upgrades a connected client socket in place, as a STARTTLS client does after the go-ahead. */
export function upgradeClient(client: LineClient, ca: string | string[]): Promise<LineClient> {
  return new Promise((resolve, reject) => {
    client.socket.removeAllListeners("data");
    const secure = tlsConnect({ socket: client.socket, ca, servername: "localhost" }, () => resolve(new LineClient(secure)));
    secure.once("error", reject);
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until `check` is true, for state that changes on the server's side of a socket. */
export async function eventually(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(10);
  }
}
