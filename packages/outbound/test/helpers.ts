import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import dns2 from "dns2";
import { hashPassword, readAll, type Queue, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";

/** The memory store with its queue, typed as present. */
export function withQueue(store: Store): Store & { readonly queue: Queue } {
  if (!store.queue) throw new Error("this store has no queue");
  return store as Store & { readonly queue: Queue };
}

/** A store with one local domain and accounts, plus a queue. */
export async function makeStore(domain: string, users: readonly string[], password = "secret"): Promise<Store & { readonly queue: Queue }> {
  const store = withQueue(createMemoryStore());
  await store.directory.addDomain(domain);
  const hash = await hashPassword(password);
  for (const user of users) await store.directory.addAccount({ address: `${user}@${domain}`, passwordHash: hash });
  return store;
}

export async function mailboxTexts(store: Store, address: string): Promise<string[]> {
  const mailbox = store.mailbox(address);
  const texts: string[] = [];
  for (const info of await mailbox.list()) texts.push(new TextDecoder().decode(await readAll(await mailbox.read(info.uid))));
  return texts;
}

// ---------------------------------------------------------------- DNS

export interface Zone {
  readonly mx?: readonly (readonly [number, string])[];
  readonly a?: readonly string[];
  readonly aaaa?: readonly string[];
  /** Answer every question for this name with this error. */
  readonly rcode?: "NXDOMAIN" | "SERVFAIL";
}

/** A DNS server on 127.0.0.1:0 for `zones`; unknown names are NXDOMAIN. */
export async function startDns(zones: Record<string, Zone>): Promise<{ server: string; close(): Promise<void> }> {
  const { Packet } = dns2;
  const server = dns2.createUDPServer((request, send) => {
    const response = Packet.createResponseFromRequest(request);
    const question = request.questions[0];
    const name = (question?.name ?? "").toLowerCase();
    const zone = zones[name];
    if (!zone || zone.rcode) {
      response.header.rcode = zone?.rcode === "SERVFAIL" ? 2 : 3; // RFC 1035 4.1.1
      send(response);
      return;
    }
    // dns2's Resource type wants methods that plain records (which it encodes fine) do not have.
    const answers = response.answers as unknown as Record<string, unknown>[];
    const base = { name: question?.name ?? name, class: Packet.CLASS.IN, ttl: 60 };
    if (question?.type === Packet.TYPE.MX) {
      for (const [priority, exchange] of zone.mx ?? []) answers.push({ ...base, type: Packet.TYPE.MX, priority, exchange });
    } else if (question?.type === Packet.TYPE.A) {
      for (const address of zone.a ?? []) answers.push({ ...base, type: Packet.TYPE.A, address });
    } else if (question?.type === Packet.TYPE.AAAA) {
      for (const address of zone.aaaa ?? []) answers.push({ ...base, type: Packet.TYPE.AAAA, address });
    }
    send(response);
  });
  await server.listen(0, "127.0.0.1");
  const address = server.address();
  return {
    server: `127.0.0.1:${address.port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

// ---------------------------------------------------------------- scripted receiver

export interface Script {
  readonly greeting?: string;
  /** Wait this long before the greeting (a server that pauses on purpose, as postscreen does). */
  readonly greetingDelayMs?: number;
  readonly ehlo?: readonly string[];
  /** Answer EHLO with 500, as a pre-ESMTP server would. */
  readonly noEhlo?: boolean;
  /** Reply to RCPT for this address; default 250. */
  rcpt?(address: string): string;
  /** Reply after the data; default 250. Return null to never answer (a hung server). */
  data?(count: number): string | null;
  /** Reply to MAIL; default 250. With `hangUp` the server closes the connection right after it. */
  mail?(): { readonly reply: string; readonly hangUp?: boolean };
  /** Offer STARTTLS, say go ahead, then answer the handshake with something that is not TLS. */
  readonly brokenStartTls?: boolean;
  /** Reply to the DATA command; default 354. */
  dataCommand?(): string;
  /**
   * Answer EHLO with continuation lines that never end: one every `everyMs` (a drip), or without
   * `everyMs` as fast as the connection takes them (a flood).
   */
  readonly endlessEhlo?: { readonly everyMs?: number };
  /** Never answer QUIT (and keep the connection open). */
  readonly silentQuit?: boolean;
}

export interface Received {
  readonly from: string;
  readonly to: readonly string[];
  readonly body: string;
  readonly mailLine: string;
}

/** A tiny SMTP server that answers as scripted and records the messages it accepted. */
export async function startScripted(host: string, port: number, script: Script = {}): Promise<{ port: number; received: Received[]; helo: string[]; connections: number; peak: number; close(): Promise<void> }> {
  const received: Received[] = [];
  const helo: string[] = [];
  const sockets = new Set<Socket>();
  // Sessions between greeting and QUIT; counted by the protocol, not by socket events, which can lag.
  const state = { connections: 0, peak: 0, active: 0 };
  const server: Server = createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    state.active++;
    state.peak = Math.max(state.peak, state.active);
    let quit = false;
    socket.on("close", () => {
      if (!quit) state.active--;
    });
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    // As a real server decodes commands (smtp-protocol does): addresses may be UTF-8 (SMTPUTF8).
    socket.setEncoding("utf8");
    const greet = (): void => void socket.write(`${script.greeting ?? "220 scripted ESMTP"}\r\n`);
    if (script.greetingDelayMs === undefined) greet();
    else setTimeout(greet, script.greetingDelayMs);
    let buffer = "";
    let inData = false;
    let from = "";
    let mailLine = "";
    let to: string[] = [];
    let dataLines: string[] = [];
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      let index: number;
      while ((index = buffer.indexOf("\r\n")) >= 0) {
        const line = buffer.slice(0, index);
        buffer = buffer.slice(index + 2);
        if (inData) {
          if (line === ".") {
            inData = false;
            const reply = script.data ? script.data(received.length) : "250 2.0.0 ok";
            if (reply === null) continue;
            if (reply.startsWith("2")) received.push({ from, to, body: dataLines.map((l) => `${l}\r\n`).join(""), mailLine });
            socket.write(`${reply}\r\n`);
          } else dataLines.push(line.startsWith(".") ? line.slice(1) : line);
          continue;
        }
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO" && script.noEhlo) socket.write("500 5.5.1 what is EHLO\r\n");
        else if (verb === "EHLO" && script.endlessEhlo) endless(socket, script.endlessEhlo.everyMs);
        else if (verb === "EHLO") {
          const lines = ["scripted", ...(script.ehlo ?? ["8BITMIME", "SIZE 1000000"]), ...(script.brokenStartTls ? ["STARTTLS"] : [])];
          socket.write(lines.map((l, i) => `250${i === lines.length - 1 ? " " : "-"}${l}\r\n`).join(""));
        }
        else if (verb === "HELO") {
          helo.push(line);
          socket.write("250 scripted\r\n");
        }
        else if (verb === "MAIL") {
          mailLine = line;
          from = /<([^>]*)>/.exec(line)?.[1] ?? "";
          to = [];
          const answer = script.mail?.() ?? { reply: "250 2.1.0 ok" };
          socket.write(`${answer.reply}\r\n`);
          if (answer.hangUp) socket.end();
        } else if (line.toUpperCase() === "STARTTLS" && script.brokenStartTls) {
          socket.write("220 2.0.0 go ahead\r\n");
          // Whatever the client's ClientHello says, this is no ServerHello.
          socket.once("data", () => socket.end("this is not TLS\r\n"));
          buffer = "";
        } else if (verb === "RCPT") {
          const address = /<([^>]*)>/.exec(line)?.[1] ?? "";
          const reply = script.rcpt ? script.rcpt(address) : "250 2.1.5 ok";
          if (reply.startsWith("2")) to.push(address);
          socket.write(`${reply}\r\n`);
        } else if (verb === "DATA") {
          const reply = script.dataCommand?.() ?? "354 go ahead";
          inData = reply.startsWith("354");
          dataLines = [];
          socket.write(`${reply}\r\n`);
        } else if (verb === "RSET") socket.write("250 ok\r\n");
        else if (verb === "QUIT" && script.silentQuit) continue;
        else if (verb === "QUIT") {
          quit = true;
          state.active--;
          socket.write("221 bye\r\n");
          socket.end();
        } else socket.write("502 5.5.1 unknown\r\n");
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const actual = (server.address() as { port: number }).port;
  return {
    port: actual,
    received,
    helo,
    get connections() {
      return state.connections;
    },
    /** Most connections open at once. */
    get peak() {
      return state.peak;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** `250-` lines until the client hangs up. */
function endless(socket: Socket, everyMs: number | undefined): void {
  const line = `250-${"x".repeat(200)}\r\n`;
  if (everyMs !== undefined) {
    const timer = setInterval(() => socket.write(line), everyMs);
    socket.on("close", () => clearInterval(timer));
    return;
  }
  const block = line.repeat(64);
  const pump = (): void => {
    while (!socket.destroyed && socket.write(block)) {
      // Until the client stops reading: "drain" goes on.
    }
  };
  socket.on("drain", pump);
  pump();
}

// ---------------------------------------------------------------- TLS

export function selfSignedCert(): { cert: string; key: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), "outbound-tls-"));
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
      "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
    ],
    { stdio: "ignore", timeout: 20_000 },
  );
  const result = { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") };
  return { ...result, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

// ---------------------------------------------------------------- DSN parsing

export interface ParsedDsn {
  readonly headers: string;
  readonly contentType: string;
  readonly parts: readonly { readonly contentType: string; readonly body: string }[];
  /** The per-recipient blocks of the message/(global-)delivery-status part, as field maps. */
  readonly recipients: readonly Record<string, string>[];
  readonly perMessage: Record<string, string>;
}

export function parseDsn(text: string): ParsedDsn {
  const split = text.indexOf("\r\n\r\n");
  const headers = text.slice(0, split);
  const contentType = /^Content-Type: (.*)$/im.exec(headers)?.[1] ?? "";
  const boundary = /boundary="([^"]+)"/.exec(contentType)?.[1] ?? "";
  const body = text.slice(split + 4);
  const parts = body
    .split(`--${boundary}`)
    .slice(1, -1)
    .map((raw) => {
      // The CRLFs around a delimiter belong to the delimiter (RFC 2046 5.1.1).
      const part = raw.replace(/^\r\n/, "").replace(/\r\n$/, "");
      const end = part.indexOf("\r\n\r\n");
      return { contentType: /^Content-Type: ([^;\r\n]*)/im.exec(part.slice(0, end))?.[1] ?? "", body: part.slice(end + 4) };
    });
  // RFC 6533's message/global-delivery-status has the same fields (UTF-8 allowed).
  const status = parts.find((p) => p.contentType === "message/delivery-status" || p.contentType === "message/global-delivery-status")?.body ?? "";
  const blocks = status
    .split(/\r\n\r\n/)
    .map((b) => b.trim())
    .filter((b) => b.length > 0)
    .map((b) => Object.fromEntries(b.split("\r\n").map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()])));
  return { headers, contentType, parts, perMessage: blocks[0] ?? {}, recipients: blocks.slice(1) };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await sleep(20);
  }
}

/**
 * `target` with some members replaced (a store or queue that fails, or refuses, in a test's own way);
 * every other method still runs on the real object, so stores with private fields keep working.
 */
export function overriding<T extends object>(target: T, overrides: Partial<Record<keyof T, unknown>>): T {
  return new Proxy(target, {
    get(inner, property) {
      if (Object.hasOwn(overrides, property)) return overrides[property as keyof T];
      const value: unknown = Reflect.get(inner, property, inner);
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(inner) : value;
    },
  });
}
