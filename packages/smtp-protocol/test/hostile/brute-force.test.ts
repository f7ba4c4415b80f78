import { Buffer } from "node:buffer";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createLoginThrottle, hashPassword, type LoginThrottleOptions, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { createPop3Server, type Pop3Server } from "@mailroom/pop3-protocol";
import { createSmtpServer, type SmtpServer } from "../../src/index.js";
import { makeCertificate, tlsContext } from "../helpers.js";
import { trapProcessErrors } from "../../../../tests/support/hostile.js";

/**
 * Password guessing across both protocols, the way the app wires them: ONE login throttle shared by
 * the POP3 server and SMTP submission (implicit TLS, self-signed certificate from the openssl CLI).
 * Clients come from different loopback addresses (127.0.0.x) so that per-address and per-account
 * counting can be told apart. Small throttle delays keep it quick.
 */
const THROTTLE: LoginThrottleOptions = { freeFailures: 1, baseDelayMs: 60, maxDelayMs: 480, refuseAfter: 5 };
/** What THROTTLE makes the server wait before checking attempt number `failuresBefore + 1`. */
const expectedDelay = (failuresBefore: number): number =>
  failuresBefore < 1 ? 0 : Math.min(480, 60 * 2 ** (failuresBefore - 1));

const POP3_BAD = "-ERR [AUTH] invalid user name or password";
const POP3_REFUSED = "-ERR [AUTH] too many failed logins, try later";
const SMTP_BAD = "535 5.7.8 Authentication credentials invalid";
const SMTP_REFUSED = "454 4.7.0 Temporary authentication failure";

const b64 = (text: string): string => Buffer.from(text, "utf8").toString("base64");

/** A line client on a socket bound to a chosen loopback source address. */
class Client {
  #buffer = "";
  #closed = false;
  #wake: (() => void) | null = null;

  private constructor(readonly socket: Socket) {
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      this.#buffer += chunk;
      this.#wake?.();
    });
    socket.on("close", () => {
      this.#closed = true;
      this.#wake?.();
    });
    socket.on("error", () => {});
  }

  static async open(port: number, from: string, tls: boolean): Promise<Client> {
    const plain = await new Promise<Socket>((resolve, reject) => {
      const s = netConnect({ host: "127.0.0.1", port, localAddress: from }, () => resolve(s));
      s.once("error", reject);
    });
    if (!tls) return new Client(plain);
    const secure = await new Promise<Socket>((resolve, reject) => {
      const s = tlsConnect({ socket: plain, rejectUnauthorized: false, servername: "localhost" }, () => resolve(s));
      s.once("error", reject);
    });
    return new Client(secure);
  }

  async line(timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const at = this.#buffer.indexOf("\r\n");
      if (at >= 0) {
        const line = this.#buffer.slice(0, at);
        this.#buffer = this.#buffer.slice(at + 2);
        return line;
      }
      if (this.#closed) throw new Error("connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("no reply in time");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          this.#wake = null;
          resolve();
        };
      });
    }
  }

  /** A whole SMTP reply, last line only. */
  async reply(): Promise<string> {
    for (;;) {
      const line = await this.line();
      if (line[3] !== "-") return line;
    }
  }

  write(text: string): void {
    this.socket.write(text);
  }

  close(): void {
    this.socket.destroy();
  }
}

interface Attempt {
  readonly reply: string;
  readonly ms: number;
}

/** A POP3 session from one address; each `login` is a USER/PASS pair, timed from PASS to its answer. */
async function pop3From(port: number, from: string) {
  const client = await Client.open(port, from, false);
  expect(await client.line()).toMatch(/^\+OK /);
  return {
    async login(user: string, password: string): Promise<Attempt> {
      client.write(`USER ${user}\r\n`);
      expect(await client.line()).toBe("+OK send PASS");
      const started = performance.now();
      client.write(`PASS ${password}\r\n`);
      const reply = await client.line();
      return { reply, ms: performance.now() - started };
    },
    close: () => client.close(),
  };
}

/** An SMTP submission session (implicit TLS) from one address; each `login` is one AUTH PLAIN, timed. */
async function smtpFrom(port: number, from: string) {
  const client = await Client.open(port, from, true);
  expect(await client.reply()).toMatch(/^220 /);
  client.write("EHLO guesser.example\r\n");
  expect(await client.reply()).toMatch(/^250 /);
  return {
    async login(user: string, password: string): Promise<Attempt> {
      const started = performance.now();
      client.write(`AUTH PLAIN ${b64(`\0${user}\0${password}`)}\r\n`);
      const reply = await client.reply();
      return { reply, ms: performance.now() - started };
    },
    close: () => client.close(),
  };
}

let cert: ReturnType<typeof makeCertificate>;
let cheap: string;
let realAlice: string;
let trap: ReturnType<typeof trapProcessErrors>;

beforeAll(async () => {
  trap = trapProcessErrors();
  cert = makeCertificate();
  // Cheap hashes where only the throttle's own delays are measured; production parameters where
  // unknown-user and wrong-password timing are compared (the store's dummy hash uses the defaults).
  cheap = await hashPassword("right password", { logN: 10 });
  realAlice = await hashPassword("right password");
});

afterAll(() => {
  cert?.cleanup();
  trap.uninstall();
  expect(trap.errors).toEqual([]);
});

let running: { pop3: Pop3Server; smtp: SmtpServer } | undefined;
afterEach(async () => {
  await Promise.all([running?.pop3.close({ deadlineMs: 200 }), running?.smtp.close({ deadlineMs: 200 })]);
  running = undefined;
});

async function servers(store: Store, throttle = createLoginThrottle(THROTTLE)): Promise<{ pop3: number; smtp: number }> {
  const pop3 = createPop3Server({ store, hostname: "pop.example.test", loginThrottle: throttle });
  const smtp = createSmtpServer({ store, hostname: "smtp.example.test", tls: tlsContext(cert), loginThrottle: throttle });
  running = { pop3, smtp };
  const p = await pop3.listen({ host: "127.0.0.1", port: 0 });
  const s = await smtp.listen({ host: "127.0.0.1", port: 0, mode: "submission", implicitTls: true });
  return { pop3: p.port, smtp: s.port };
}

async function storeWith(accounts: Record<string, string>): Promise<Store> {
  const store = createMemoryStore();
  await store.directory.addDomain("example.test");
  for (const [address, hash] of Object.entries(accounts)) await store.directory.addAccount({ address, passwordHash: hash });
  return store;
}

describe("one login throttle shared by POP3 and SMTP submission", () => {
  it("slows failures per client address across both protocols, then refuses the address outright", async () => {
    // Every guess targets a different real account, so only the address count can explain the delays.
    const users = Array.from({ length: 8 }, (_, i) => `user${i}@example.test`);
    const store = await storeWith({ ...Object.fromEntries(users.map((u) => [u, cheap])), "bob@example.test": cheap });
    const port = await servers(store);
    const pop3 = await pop3From(port.pop3, "127.0.0.11");
    const smtp = await smtpFrom(port.smtp, "127.0.0.11");
    try {
      const attempts: Attempt[] = [];
      // POP3, SMTP, POP3, SMTP, POP3: five failures from one address.
      for (let i = 0; i < 5; i++) {
        const attempt = await (i % 2 === 0 ? pop3 : smtp).login(users[i]!, "wrong");
        expect(attempt.reply).toBe(i % 2 === 0 ? POP3_BAD : SMTP_BAD);
        attempts.push(attempt);
      }
      // Each attempt waited at least what the failures before it (in either protocol) cost.
      attempts.forEach((a, i) => expect(a.ms).toBeGreaterThanOrEqual(expectedDelay(i) - 5));
      // The SMTP attempt after one POP3 failure was already slowed: the count is shared.
      expect(attempts[1]!.ms).toBeGreaterThanOrEqual(expectedDelay(1) - 5);
      // And the delay grows: the first guess was answered well before what the fifth had to wait.
      expect(attempts[0]!.ms).toBeLessThan(expectedDelay(4));

      // From now on the address is refused at once, in both protocols, even with a right password.
      for (const [session, refused] of [[pop3, POP3_REFUSED], [smtp, SMTP_REFUSED]] as const) {
        const attempt = await session.login(users[6]!, "right password");
        expect(attempt.reply).toBe(refused);
        expect(attempt.ms).toBeLessThan(expectedDelay(4));
      }
      expect((await pop3.login("bob@example.test", "right password")).reply).toBe(POP3_REFUSED);

      // Another address is not affected.
      const other = await pop3From(port.pop3, "127.0.0.12");
      expect((await other.login("bob@example.test", "right password")).reply).toMatch(/^\+OK /);
      other.close();
      const otherSmtp = await smtpFrom(port.smtp, "127.0.0.12");
      expect((await otherSmtp.login(users[7]!, "right password")).reply).toBe("235 2.7.0 Authentication successful");
      otherSmtp.close();
    } finally {
      pop3.close();
      smtp.close();
    }
  });

  it("slows and then refuses one account guessed from many addresses, in both protocols", async () => {
    const store = await storeWith({ "alice@example.test": cheap, "bob@example.test": cheap });
    const port = await servers(store);
    const attempts: Attempt[] = [];
    for (let i = 0; i < 5; i++) {
      const from = `127.0.1.${i + 1}`;
      const session = i % 2 === 0 ? await pop3From(port.pop3, from) : await smtpFrom(port.smtp, from);
      const attempt = await session.login("alice@example.test", `guess ${i}`);
      expect(attempt.reply).toBe(i % 2 === 0 ? POP3_BAD : SMTP_BAD);
      attempts.push(attempt);
      session.close();
    }
    attempts.forEach((a, i) => expect(a.ms).toBeGreaterThanOrEqual(expectedDelay(i) - 5));

    // A fresh address with the right password is refused for alice, but bob gets in from it.
    const pop3 = await pop3From(port.pop3, "127.0.1.100");
    const smtp = await smtpFrom(port.smtp, "127.0.1.100");
    try {
      expect((await pop3.login("alice@example.test", "right password")).reply).toBe(POP3_REFUSED);
      expect((await smtp.login("alice@example.test", "right password")).reply).toBe(SMTP_REFUSED);
      // Letter case does not make a new account name.
      expect((await smtp.login("ALICE@Example.Test", "right password")).reply).toBe(SMTP_REFUSED);
      expect((await smtp.login("bob@example.test", "right password")).reply).toBe("235 2.7.0 Authentication successful");
    } finally {
      pop3.close();
      smtp.close();
    }
  });

  it("answers unknown users and wrong passwords alike: same text, similar time, same refusal", { timeout: 120_000 }, async () => {
    const store = await storeWith({ "alice@example.test": realAlice });
    // No delays while timing the password check itself.
    const port = await servers(store, createLoginThrottle({ freeFailures: 1000, refuseAfter: 2000 }));
    const pop3 = await pop3From(port.pop3, "127.0.2.1");
    const smtp = await smtpFrom(port.smtp, "127.0.2.1");
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    try {
      // Warm up: the store makes its dummy hash on first use.
      await pop3.login("nobody@example.test", "x");
      for (const [session, bad] of [[pop3, POP3_BAD], [smtp, SMTP_BAD]] as const) {
        const unknown: number[] = [];
        const wrong: number[] = [];
        for (let i = 0; i < 5; i++) {
          const u = await session.login(`nobody${i}@example.test`, "guess");
          const w = await session.login("alice@example.test", `guess ${i}`);
          expect(u.reply).toBe(bad);
          expect(w.reply).toBe(bad);
          unknown.push(u.ms);
          wrong.push(w.ms);
        }
        const [mu, mw] = [median(unknown), median(wrong)];
        // Same scrypt work either way: medians within a factor of two (the box is shared and noisy).
        expect(Math.max(mu, mw) / Math.min(mu, mw), `unknown ${mu.toFixed(0)} ms, wrong ${mw.toFixed(0)} ms`).toBeLessThan(2);
      }
    } finally {
      pop3.close();
      smtp.close();
    }

    // Once throttled, the refusal does not depend on whether the account exists either.
    const strict = await storeWith({ "alice@example.test": cheap });
    await Promise.all([running?.pop3.close({ deadlineMs: 200 }), running?.smtp.close({ deadlineMs: 200 })]);
    const again = await servers(strict, createLoginThrottle({ freeFailures: 100, refuseAfter: 2 }));
    for (const [user, from] of [["alice@example.test", "127.0.3.1"], ["ghost@example.test", "127.0.3.2"]] as const) {
      const p = await pop3From(again.pop3, from);
      const s = await smtpFrom(again.smtp, from);
      expect((await p.login(user, "a")).reply).toBe(POP3_BAD);
      expect((await s.login(user, "b")).reply).toBe(SMTP_BAD);
      expect((await p.login(user, "c")).reply).toBe(POP3_REFUSED);
      expect((await s.login(user, "d")).reply).toBe(SMTP_REFUSED);
      p.close();
      s.close();
    }
  });
});
