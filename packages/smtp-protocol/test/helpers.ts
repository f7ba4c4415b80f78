import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { hashPassword, readAll, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { TlsContext } from "@mailroom/transport";

export const HOST = "mx.local.test";
export const PASSWORDS = { "alice@local.test": "alice-secret", "bob@local.test": "bob-secret" } as const;

/** A self-signed certificate made with the openssl CLI, in a temp dir removed by `cleanup`. */
export function makeCertificate(): { cert: string; key: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "smtp-cert-"));
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
    ],
    { stdio: "ignore" },
  );
  const cert = readFileSync(join(dir, "cert.pem"), "utf8");
  const key = readFileSync(join(dir, "key.pem"), "utf8");
  return { cert, key, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function tlsContext(material: { cert: string; key: string }): TlsContext {
  return new TlsContext({ cert: material.cert, key: material.key });
}

let cheapHashes: Promise<{ alice: string; bob: string; carol: string }> | undefined;

/** A memory store with local.test (alice, bob, aliases) and other-local.test (carol). */
export async function seededStore(): Promise<Store> {
  cheapHashes ??= (async () => ({
    alice: await hashPassword(PASSWORDS["alice@local.test"], { logN: 10 }),
    bob: await hashPassword(PASSWORDS["bob@local.test"], { logN: 10 }),
    carol: await hashPassword("carol-secret", { logN: 10 }),
  }))();
  const hashes = await cheapHashes;
  const store = createMemoryStore();
  const d = store.directory;
  await d.addDomain("local.test");
  await d.addDomain("other-local.test");
  await d.addAccount({ address: "alice@local.test", passwordHash: hashes.alice });
  await d.addAccount({ address: "bob@local.test", passwordHash: hashes.bob });
  await d.addAccount({ address: "carol@other-local.test", passwordHash: hashes.carol });
  await d.addAlias({ source: "info@local.test", target: "alice@local.test" });
  await d.addAlias({ source: "team@local.test", target: "alice@local.test" });
  await d.addAlias({ source: "team@local.test", target: "bob@local.test" });
  await d.addAlias({ source: "postmaster@local.test", target: "bob@local.test" });
  return store;
}

/** Every stored message of a mailbox, as text, in arrival order. */
export async function storedMessages(store: Store, mailbox: string): Promise<string[]> {
  const box = store.mailbox(mailbox);
  const out: string[] = [];
  for (const info of await box.list()) out.push(new TextDecoder().decode(await readAll(await box.read(info.uid))));
  return out;
}

/** A minimal line-oriented client for scripted conversations. */
export class RawClient {
  #socket: Socket | TLSSocket;
  #buffer = "";
  #closed = false;
  #waiter: (() => void) | null = null;

  private constructor(socket: Socket | TLSSocket) {
    this.#socket = socket;
    this.#listen(socket);
  }

  static async connect(port: number, options: { tls?: boolean } = {}): Promise<RawClient> {
    const socket = await new Promise<Socket | TLSSocket>((resolve, reject) => {
      const s = options.tls
        ? tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => resolve(s))
        : netConnect({ host: "127.0.0.1", port }, () => resolve(s));
      s.once("error", reject);
    });
    return new RawClient(socket);
  }

  #listen(socket: Socket | TLSSocket): void {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.#buffer += chunk;
      this.#wake();
    });
    socket.on("close", () => {
      this.#closed = true;
      this.#wake();
    });
    socket.on("error", () => {});
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  get socket(): Socket | TLSSocket {
    return this.#socket;
  }

  write(data: string | Uint8Array): void {
    this.#socket.write(typeof data === "string" ? Buffer.from(data, "utf8") : data);
  }

  /** Waits until the socket can take more (for big writes). */
  async writeAll(data: string | Uint8Array): Promise<void> {
    if (!this.#socket.write(typeof data === "string" ? Buffer.from(data, "utf8") : data)) {
      await new Promise<void>((resolve) => this.#socket.once("drain", resolve));
    }
  }

  /** The next line without CRLF, or null once the server closed and nothing is left. */
  async line(timeoutMs = 5000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.#buffer.indexOf("\r\n");
      if (at >= 0) {
        const line = this.#buffer.slice(0, at);
        this.#buffer = this.#buffer.slice(at + 2);
        return Buffer.from(line, "latin1").toString("utf8");
      }
      if (this.#closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms (buffer: ${JSON.stringify(this.#buffer)})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** A whole (multi-line) reply. */
  async reply(timeoutMs = 5000): Promise<string> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.line(timeoutMs);
      if (line === null) throw new Error(`connection closed after ${JSON.stringify(lines)}`);
      lines.push(line);
      if (line[3] !== "-") return lines.join("\n");
    }
  }

  async command(text: string): Promise<string> {
    this.write(`${text}\r\n`);
    return this.reply();
  }

  async startTls(): Promise<void> {
    const plain = this.#socket;
    plain.removeAllListeners("data");
    plain.removeAllListeners("close");
    this.#buffer = "";
    const secure = await new Promise<TLSSocket>((resolve, reject) => {
      const s = tlsConnect({ socket: plain as Socket, rejectUnauthorized: false, servername: "localhost" }, () => resolve(s));
      s.once("error", reject);
    });
    this.#socket = secure;
    this.#listen(secure);
  }

  get closed(): boolean {
    return this.#closed;
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#closed) {
      if (Date.now() > deadline) throw new Error("server did not close the connection");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}

export const b64 = (text: string): string => Buffer.from(text, "utf8").toString("base64");
