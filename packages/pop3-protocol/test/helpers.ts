import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { promisify } from "node:util";
import { fromBytes, hashPassword, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { TlsContext } from "@mailroom/transport";
import { createPop3Server, type Pop3Server, type Pop3ServerOptions } from "../src/index.js";

export const HOSTNAME = "pop.example.test";
export const ALICE = { login: "alice@example.test", password: "correct horse" };
export const BOB = { login: "bob@example.test", password: "battery staple" };

/** Alice's mailbox at the start of every transcript; sizes and UIDs (m1, m2, m3) are in the fixtures. */
export const ALICE_MESSAGES = [
  "From: bob@example.test\r\nSubject: one\r\n\r\nHello Alice\r\n",
  // Lines that need dot-stuffing, and a last line without CRLF.
  "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast line",
  "Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
];

/** A memory store with example.test, alice (three messages) and bob (none). Hashes use cheap parameters. */
export async function fixtureStore(): Promise<Store> {
  const store = createMemoryStore();
  await store.directory.addDomain("example.test");
  for (const user of [ALICE, BOB]) {
    await store.directory.addAccount({ address: user.login, passwordHash: await hashPassword(user.password, { logN: 10 }) });
  }
  const alice = store.mailbox(ALICE.login);
  for (const text of ALICE_MESSAGES) await alice.append(fromBytes(text));
  return store;
}

export interface Cert {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  readonly context: TlsContext;
}

/** A self-signed certificate for localhost/127.0.0.1, made with the openssl CLI in a temp dir. */
export async function makeCert(): Promise<Cert> {
  const dir = await mkdtemp(join(tmpdir(), "mailroom-pop3-cert-"));
  await promisify(execFile)("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ]);
  const cert = await readFile(join(dir, "cert.pem"), "utf8");
  const key = await readFile(join(dir, "key.pem"), "utf8");
  return { dir, cert, key, context: new TlsContext({ cert, key }) };
}

export async function removeCert(cert: Cert | undefined): Promise<void> {
  if (cert) await rm(cert.dir, { recursive: true, force: true });
}

export interface Running {
  readonly server: Pop3Server;
  readonly store: Store;
  readonly port: number;
  close(): Promise<void>;
}

export async function startServer(
  options: Partial<Pop3ServerOptions> & { implicitTls?: boolean } = {},
): Promise<Running> {
  const { implicitTls, ...rest } = options;
  const store = rest.store ?? (await fixtureStore());
  const server = createPop3Server({ hostname: HOSTNAME, ...rest, store });
  const listener = await server.listen({ host: "127.0.0.1", port: 0, implicitTls: implicitTls ?? false });
  return { server, store, port: listener.port, close: () => server.close({ deadlineMs: 200 }) };
}

/** A test client that reads CRLF lines (as latin1, so bytes round-trip) from a plain or TLS socket. */
export class LineClient {
  #socket: Socket;
  #buffer = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | null = null;

  private constructor(socket: Socket) {
    this.#socket = socket;
    this.#listen(socket);
  }

  static connect(port: number, tls?: { ca: string }): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const socket = tls
        ? tlsConnect({ host: "127.0.0.1", port, ca: tls.ca, servername: "localhost" }, () => resolve(new LineClient(socket)))
        : netConnect({ host: "127.0.0.1", port }, () => resolve(new LineClient(socket)));
      socket.once("error", reject);
    });
  }

  get socket(): Socket {
    return this.#socket;
  }

  #listen(socket: Socket): void {
    socket.on("data", this.#onData);
    socket.on("close", this.#onClose);
    socket.on("error", () => {});
  }

  #onData = (chunk: Buffer): void => {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    this.#wake?.();
  };

  #onClose = (): void => {
    this.#closed = true;
    this.#wake?.();
  };

  write(text: string): void {
    this.#socket.write(text);
  }

  /** The next CRLF line, or null once the server closed and nothing is left. Rejects after `timeoutMs`. */
  async line(timeoutMs = 5000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = this.#buffer.indexOf("\r\n");
      if (end !== -1) {
        const line = this.#buffer.subarray(0, end).toString("latin1");
        this.#buffer = this.#buffer.subarray(end + 2);
        return line;
      }
      if (this.#closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no line from the server within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = null;
    }
  }

  /** Bytes up to and including `terminator`, exactly as sent. */
  async until(terminator: string, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.#buffer.indexOf(terminator);
      if (at !== -1) {
        const out = this.#buffer.subarray(0, at + terminator.length);
        this.#buffer = this.#buffer.subarray(at + terminator.length);
        return out;
      }
      if (this.#closed || Date.now() > deadline) throw new Error(`no ${JSON.stringify(terminator)} from the server`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Lines that arrived but were not read yet. */
  get pending(): string {
    return this.#buffer.toString("latin1");
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Client side of STLS: hands the socket to TLS and verifies the server against `ca`. */
  async startTls(ca: string): Promise<void> {
    const plain = this.#socket;
    plain.off("data", this.#onData);
    plain.off("close", this.#onClose);
    this.#buffer = Buffer.alloc(0);
    const secure = await new Promise<Socket>((resolve, reject) => {
      const s = tlsConnect({ socket: plain, ca, servername: "localhost" }, () => resolve(s));
      s.once("error", reject);
    });
    this.#socket = secure;
    this.#listen(secure);
  }

  destroy(): void {
    this.#socket.destroy();
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#closed) {
      if (Date.now() > deadline) throw new Error("server did not close the connection");
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}

/** Logs in with USER/PASS and returns the client, greeting and login replies checked. */
export async function loginClient(port: number, user = ALICE): Promise<LineClient> {
  const client = await LineClient.connect(port);
  await client.line();
  client.write(`USER ${user.login}\r\nPASS ${user.password}\r\n`);
  await client.line();
  const reply = await client.line();
  if (!reply?.startsWith("+OK")) throw new Error(`login failed: ${reply}`);
  return client;
}
