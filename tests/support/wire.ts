// Minimal line-oriented clients for the smoke test: just enough SMTP and POP3 (with STLS) to prove a
// message goes in and comes out byte-exact. Each step throws with the step's name on a wrong reply.
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";

export class LineClient {
  #buffer = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  #closed = false;

  constructor(private socket: Socket | TLSSocket) {
    this.#listen(socket);
  }

  static open(host: string, port: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host, port }, () => resolve(new LineClient(socket)));
      socket.once("error", reject);
    });
  }

  #listen(socket: Socket | TLSSocket): void {
    socket.on("data", (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#wake();
    });
    socket.on("close", () => {
      this.#closed = true;
      this.#wake();
    });
    socket.on("error", () => {});
  }

  #wake(): void {
    for (const waiter of this.#waiters.splice(0)) waiter();
  }

  async #until<T>(take: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = take();
      if (value !== undefined) return value;
      if (this.#closed) throw new Error(`connection closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  line(what = "a reply line"): Promise<string> {
    return this.#until(() => {
      const at = this.#buffer.indexOf("\r\n");
      if (at < 0) return undefined;
      const text = this.#buffer.subarray(0, at).toString("utf8");
      this.#buffer = this.#buffer.subarray(at + 2);
      return text;
    }, what);
  }

  /** Reads a POP3 multi-line body up to the terminating ".", undoing dot-stuffing. */
  multiline(what: string): Promise<Buffer> {
    return this.#until(() => {
      const end = this.#buffer.indexOf("\r\n.\r\n");
      const whole = this.#buffer.subarray(0, 3).equals(Buffer.from(".\r\n"));
      if (end < 0 && !whole) return undefined;
      const body = whole ? Buffer.alloc(0) : this.#buffer.subarray(0, end + 2);
      this.#buffer = this.#buffer.subarray(whole ? 3 : end + 5);
      const text = body.toString("latin1").replace(/^\.\./gm, ".");
      return Buffer.from(text, "latin1");
    }, what);
  }

  send(line: string): void {
    this.socket.write(`${line}\r\n`);
  }

  async expect(line: string, pattern: RegExp, step: string): Promise<string> {
    this.send(line);
    return this.reply(pattern, step);
  }

  /** Reads one reply (SMTP multi-line replies are joined) and checks it. */
  async reply(pattern: RegExp, step: string): Promise<string> {
    let last = await this.line(step);
    let text = last;
    while (/^\d{3}-/.test(last)) {
      last = await this.line(step);
      text += `\n${last}`;
    }
    if (!pattern.test(text)) throw new Error(`${step}: unexpected reply ${JSON.stringify(text)}`);
    return text;
  }

  /** Continues the same connection over TLS (after STARTTLS / STLS was accepted). */
  async upgrade(servername: string, ca: string): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners("data");
    plain.removeAllListeners("close");
    const secure = tlsConnect({ socket: plain, servername, ca, rejectUnauthorized: true });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", resolve);
      secure.once("error", reject);
    });
    this.socket = secure;
    this.#buffer = Buffer.alloc(0);
    this.#listen(secure);
  }

  close(): void {
    this.socket.destroy();
  }
}
