import { createHash } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Connection } from "@mailroom/transport";
import { createLoginThrottle, hashPassword, StoreError, type Store, type StoreErrorCode } from "@mailroom/store";
import { createSmtpServer, type SmtpServer, type SmtpServerOptions } from "../src/index.js";
import { HOST, RawClient, seededStore, storedMessages } from "./helpers.js";

/** A full garbage collection, on every runtime we test on. */
function gc(): void {
  const g = globalThis as { gc?: () => void; Bun?: { gc(force: boolean): void } };
  if (g.Bun) return g.Bun.gc(true);
  if (!g.gc) {
    setFlagsFromString("--expose-gc");
    g.gc = runInNewContext("gc") as () => void;
  }
  g.gc!();
}

let servers: SmtpServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.close({ deadlineMs: 500 })));
  servers = [];
});

async function start(options: Partial<SmtpServerOptions> = {}, mode: "mx" | "submission" = "mx") {
  const store = options.store ?? (await seededStore());
  const server = createSmtpServer({ store, hostname: HOST, ...options });
  servers.push(server);
  const listener = await server.listen({ host: "127.0.0.1", port: 0, mode });
  return { store, server, port: listener.port };
}

async function envelope(client: RawClient, to = "bob@local.test"): Promise<void> {
  expect(await client.reply()).toMatch(/^220 /);
  expect(await client.command("HELO client.example")).toBe("250 mx.local.test");
  expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
  expect(await client.command(`RCPT TO:<${to}>`)).toBe("250 2.1.5 Recipient OK");
}

async function waitFor(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The store with `deliver` replaced (everything else is the real memory store). */
function withDeliver(store: Store, deliver: Store["deliver"]): Store {
  const wrapped = Object.create(store) as Store;
  Object.defineProperty(wrapped, "deliver", { value: deliver });
  return wrapped;
}

describe("durability and streaming", () => {
  it("a client that disconnects mid-DATA leaves nothing behind", async () => {
    let aborted = false;
    const base = await seededStore();
    const store = withDeliver(base, async (boxes, source, options) => {
      options?.signal?.addEventListener("abort", () => (aborted = true));
      return base.deliver(boxes, source, options);
    });
    const { server, port } = await start({ store });
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("DATA")).toMatch(/^354 /);
    client.write("Subject: half\r\n\r\n" + "x".repeat(100_000) + "\r\n");
    await new Promise((r) => setTimeout(r, 100));
    client.close();
    await waitFor(() => server.sessionCount === 0);
    await waitFor(() => aborted);
    expect(await storedMessages(base, "bob@local.test")).toEqual([]);
  });

  it("answers a whole conversation sent before the client shut down its side, and delivers the message", async () => {
    // A script (`printf … | nc -N`) sends everything, then half-closes; Postfix answers every command.
    const { server, store, port } = await start();
    const client = await RawClient.connect(port);
    client.write("HELO client.example\r\nMAIL FROM:<a@far.example>\r\nRCPT TO:<bob@local.test>\r\nDATA\r\n");
    client.write("Subject: half-closed\r\n\r\nsent in one go\r\n.\r\nQUIT\r\n");
    client.socket.end();
    const lines: string[] = [];
    for (let line = await client.line(); line !== null; line = await client.line()) lines.push(line);
    expect(lines).toEqual([
      expect.stringMatching(/^220 /),
      "250 mx.local.test",
      "250 2.1.0 Sender OK",
      "250 2.1.5 Recipient OK",
      expect.stringMatching(/^354 /),
      expect.stringMatching(/^250 2\.0\.0 OK: message accepted as /),
      "221 2.0.0 mx.local.test closing connection",
    ]);
    const stored = await storedMessages(store, "bob@local.test");
    expect(stored).toHaveLength(1);
    expect(stored[0]).toContain("sent in one go");
    await waitFor(() => server.sessionCount === 0);
  });

  it("drops a message the client had not finished when it shut down its side, and closes", async () => {
    const { server, store, port } = await start();
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("DATA")).toMatch(/^354 /);
    client.write("Subject: unfinished\r\n\r\nno end marker\r\n");
    client.socket.end();
    expect(await client.line()).toBeNull();
    await waitFor(() => server.sessionCount === 0);
    expect(await storedMessages(store, "bob@local.test")).toEqual([]);
  });

  it("store errors map to 452 4.3.1, 552 5.3.4, 451 4.3.0 and 554 5.3.0 and the session goes on", async () => {
    const cases: [StoreErrorCode, string][] = [
      ["no-space", "452 4.3.1 Insufficient system storage"],
      ["too-big", "552 5.3.4 Message size exceeds fixed maximum message size"],
      ["unavailable", "451 4.3.0 Temporary failure, please try again later"],
      ["permanent", "554 5.3.0 Message could not be stored"],
    ];
    let next: StoreErrorCode = "no-space";
    const base = await seededStore();
    const store = withDeliver(base, async (_boxes, source) => {
      for await (const _ of source) void _;
      throw new StoreError(next, "disk on fire at /var/secret/path");
    });
    const { port } = await start({ store });
    const client = await RawClient.connect(port);
    await envelope(client);
    for (const [code, expected] of cases) {
      next = code;
      if (code !== "no-space") {
        expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
        expect(await client.command("RCPT TO:<bob@local.test>")).toBe("250 2.1.5 Recipient OK");
      }
      expect(await client.command("DATA")).toMatch(/^354 /);
      expect(await client.command("Subject: x\r\n\r\nbody\r\n.")).toBe(expected);
    }
    expect(await client.command("NOOP")).toBe("250 2.0.0 OK");
    client.close();
  });

  it("answers 250 only after the store resolved", async () => {
    const base = await seededStore();
    let resolvedAt = 0;
    const store = withDeliver(base, async (boxes, source, options) => {
      const result = await base.deliver(boxes, source, options);
      await new Promise((r) => setTimeout(r, 300));
      resolvedAt = Date.now();
      return result;
    });
    const { port } = await start({ store });
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("DATA")).toMatch(/^354 /);
    const answer = await client.command("Subject: slow\r\n\r\n.");
    expect(answer).toMatch(/^250 2\.0\.0 OK: message accepted as [A-Z0-9]+$/);
    expect(resolvedAt).toBeGreaterThan(0);
    expect(Date.now()).toBeGreaterThanOrEqual(resolvedAt);
    client.close();
  });

  it("a message being delivered when the connection time limit passes gets its 250 before the 421", async () => {
    const base = await seededStore();
    let delivering: () => void = () => {};
    const started = new Promise<void>((resolve) => (delivering = resolve));
    const store = withDeliver(base, async (boxes, source, options) => {
      delivering();
      const result = await base.deliver(boxes, source, options);
      // Still in the store when the limit passes.
      await new Promise((r) => setTimeout(r, 800));
      return result;
    });
    const { port } = await start({ store, limits: { timeouts: { session: 1000 } } });
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("DATA")).toMatch(/^354 /);
    // Sent just before the limit, so that the store is still at work when it passes.
    await new Promise((r) => setTimeout(r, 500));
    client.write("Subject: late\r\n\r\n.\r\n");
    await started;
    expect(await client.reply()).toMatch(/^250 2\.0\.0 OK: message accepted as [A-Z0-9]+$/);
    expect(await client.line()).toBe(`421 4.4.2 ${HOST} connection time limit reached, closing connection`);
    await client.waitClosed();
    expect(await storedMessages(base, "bob@local.test")).toHaveLength(1);
  });

  it("hands one signal to every delivery of a session until a refused message aborts it", async () => {
    const base = await seededStore();
    const signals: AbortSignal[] = [];
    const store = withDeliver(base, async (boxes, source, options) => {
      signals.push(options!.signal!);
      return base.deliver(boxes, source, options);
    });
    const { port } = await start({ store });
    const client = await RawClient.connect(port);
    await envelope(client);
    const send = async (body: string): Promise<string> => {
      expect(await client.command("DATA")).toMatch(/^354 /);
      return client.command(`${body}\r\n.`);
    };
    expect(await send("Subject: one\r\n\r\n1")).toMatch(/^250 /);
    for (const subject of ["two", "bare LF", "three"]) {
      expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
      expect(await client.command("RCPT TO:<bob@local.test>")).toBe("250 2.1.5 Recipient OK");
      if (subject === "bare LF") expect(await send("Subject: bare\nLF")).toMatch(/^5/);
      else expect(await send(`Subject: ${subject}\r\n\r\nx`)).toMatch(/^250 /);
    }
    expect(signals).toHaveLength(4);
    expect(signals[1]).toBe(signals[0]);
    expect(signals[2]).toBe(signals[0]);
    expect(signals[0]!.aborted).toBe(true); // the refused message's delivery was stopped
    expect(signals[3]).not.toBe(signals[0]);
    expect(signals[3]!.aborted).toBe(false);
    expect((await storedMessages(base, "bob@local.test")).length).toBe(3);
    client.close();
  });

  it("gives the onData hook a signal of its own for each message", async () => {
    const signals: AbortSignal[] = [];
    const { port } = await start({
      hooks: {
        onData: async (_envelope, message, info) => {
          for await (const _ of message) void _;
          signals.push(info.signal);
          return { ok: true };
        },
      },
    });
    const client = await RawClient.connect(port);
    await envelope(client);
    for (let i = 0; i < 2; i++) {
      if (i > 0) {
        expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
        expect(await client.command("RCPT TO:<bob@local.test>")).toBe("250 2.1.5 Recipient OK");
      }
      expect(await client.command("DATA")).toMatch(/^354 /);
      expect(await client.command("Subject: hook\r\n\r\nx\r\n.")).toMatch(/^250 /);
    }
    expect(signals).toHaveLength(2);
    expect(signals[1]).not.toBe(signals[0]);
    client.close();
  });

  it("streams a 50 MB message through the onData hook with bounded memory", async () => {
    const hash = createHash("sha256");
    let received = 0;
    const { port } = await start({
      limits: { maxMessageBytes: 60 * 1024 * 1024 },
      hooks: {
        async onData(_envelope, message) {
          let n = 0;
          for await (const chunk of message) {
            hash.update(chunk);
            received += chunk.length;
            // A store that is slower than the network: the server must pause the client, not buffer.
            if (++n % 64 === 0 && !process.env.SMTP_FAST) await new Promise((r) => setTimeout(r, 1));
          }
          return { ok: true };
        },
      },
    });
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("DATA")).toMatch(/^354 /);

    const line = `${"0123456789abcdef".repeat(6)}\r\n`; // 98 octets
    const block = line.repeat(Math.floor(65_536 / line.length));
    const blockBytes = Buffer.from(block);
    const target = 50 * 1024 * 1024;
    const expected = createHash("sha256");
    // Live memory (after a collection), so that garbage from socket reads does not count.
    const live = (): number => {
      gc();
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    const baseline = live();
    let peak = baseline;
    let sent = 0;
    let nextSample = 0;
    while (sent < target) {
      await client.writeAll(blockBytes);
      expected.update(blockBytes);
      sent += blockBytes.length;
      if (sent >= nextSample) {
        const now = live();
        if (process.env.SMTP_MEM_DEBUG) console.info(`sent ${sent >> 20} MiB: +${((now - baseline) / 1048576).toFixed(1)} MiB`);
        peak = Math.max(peak, now);
        nextSample += 4 * 1024 * 1024;
      }
    }
    client.write(".\r\n");
    const answer = await client.reply(60_000);
    expect(answer).toMatch(/^250 2\.0\.0 OK/);
    // What the hook saw is the trace header plus exactly the body sent.
    expect(received).toBeGreaterThan(sent);
    const growth = peak - baseline;
    // Measured flat (< 1 MiB) with occasional fixed 16 MiB bumps from the runtime; a server that kept
    // the message would need more than the 50 MiB sent.
    expect(growth, `memory grew by ${Math.round(growth / 1048576)} MiB`).toBeLessThan(32 * 1024 * 1024);
    client.close();
    void hash;
    void expected;
  }, 120_000);
});

describe("hooks", () => {
  it("onConnect can refuse; onRcptTo and onData replace the defaults; a throwing hook is a 451", async () => {
    const seen: string[] = [];
    const { port } = await start({
      hooks: {
        onConnect: (info) => (info.remotePort % 1 === 0 && seen.length === 0 ? (seen.push("first"), { reject: "permanent", message: "go away\r\nnow" }) : { ok: true }),
        onRcptTo: (address) =>
          address.endsWith("@anything.example") ? { ok: true, mailboxes: ["bucket"] } : address.startsWith("boom") ? Promise.reject(new Error("db down")) : { reject: "temporary", message: "try later" },
        onData: async (envelope, message) => {
          for await (const _ of message) void _;
          return envelope.recipients.length > 1 ? { reject: "temporary" } : { ok: true };
        },
      },
    });
    const refused = await RawClient.connect(port);
    expect(await refused.reply()).toBe("554 5.7.1 go away  now");
    await refused.waitClosed();

    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    expect(await client.command("HELO c")).toBe("250 mx.local.test");
    expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
    expect(await client.command("RCPT TO:<bob@local.test>")).toBe("451 4.7.1 try later");
    expect(await client.command("RCPT TO:<boom@local.test>")).toBe("451 4.3.0 Temporary lookup failure, please try again later");
    expect(await client.command("RCPT TO:<any@anything.example>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("DATA")).toMatch(/^354 /);
    expect(await client.command("Subject: x\r\n\r\n.")).toMatch(/^250 2\.0\.0 OK/);
    expect(await client.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
    expect(await client.command("RCPT TO:<any@anything.example>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("RCPT TO:<other@anything.example>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("DATA")).toMatch(/^354 /);
    expect(await client.command("Subject: x\r\n\r\n.")).toBe("451 4.7.1 Rejected by policy");
    client.close();
  });

  it("a MAIL FROM whose client left while the store was asked for room runs no sender check", async () => {
    const base = await seededStore();
    let answer: (room: boolean) => void = () => undefined;
    const asked = new Promise<void>((resolveAsked) => {
      Object.defineProperty(base, "hasRoomFor", {
        configurable: true,
        value: (): Promise<boolean> =>
          new Promise<boolean>((resolve) => {
            answer = resolve;
            resolveAsked();
          }),
      });
    });
    const checked: string[] = [];
    const { server, port } = await start({
      store: base,
      hooks: {
        onMailFrom: (address) => {
          checked.push(address);
          return { ok: true };
        },
      },
    });
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    expect(await client.command("EHLO c")).toMatch(/^250-/);
    client.write("MAIL FROM:<a@far.example> SIZE=1000\r\n");
    await asked;
    // A reset, not a FIN: a client that only shut down its side still gets its answers.
    client.socket.resetAndDestroy();
    // The server has seen the connection go before the store answers.
    await waitFor(() => server.sessionCount === 0);
    answer(true);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(checked).toEqual([]);
  });

  it("onRelay lets submission accept other domains (the outbound queue seam)", async () => {
    const { store, port } = await start(
      {
        allowLoopbackPlaintextAuth: true,
        hooks: { onRelay: () => ({ ok: true, mailboxes: ["outbound-queue"] }) },
      },
      "submission",
    );
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    await client.command("EHLO c");
    expect(await client.command(`AUTH PLAIN ${Buffer.from("\0alice@local.test\0alice-secret").toString("base64")}`)).toMatch(/^235 /);
    expect(await client.command("MAIL FROM:<alice@local.test>")).toBe("250 2.1.0 Sender OK");
    expect(await client.command("RCPT TO:<friend@far.example>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("DATA")).toMatch(/^354 /);
    expect(await client.command("Subject: out\r\n\r\n.")).toMatch(/^250 /);
    expect((await storedMessages(store, "outbound-queue")).length).toBe(1);
    client.close();
  });
});

/** The store with every directory call counted by method name. */
function countingDirectory(store: Store): { store: Store; calls: Map<string, number>; total: () => number } {
  const calls = new Map<string, number>();
  const directory = new Proxy(store.directory, {
    get(target, name, receiver) {
      const value: unknown = Reflect.get(target, name, receiver);
      if (typeof value !== "function" || typeof name !== "string") return value;
      return (...args: unknown[]) => {
        calls.set(name, (calls.get(name) ?? 0) + 1);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  const wrapped = Object.create(store) as Store;
  Object.defineProperty(wrapped, "directory", { value: directory });
  return { store: wrapped, calls, total: () => [...calls.values()].reduce((a, b) => a + b, 0) };
}

describe("recipients", () => {
  it("looks for the postmaster once for many <postmaster> RCPTs, over all sessions, also when there is none", async () => {
    const seeded = await seededStore();
    // Domains that sort before local.test, the first one with a postmaster: each is looked at in a search.
    for (let i = 0; i < 200; i++) await seeded.directory.addDomain(`d${String(i).padStart(3, "0")}.test`);
    const counted = countingDirectory(seeded);
    const { port } = await start({ store: counted.store });
    const client = await RawClient.connect(port);
    await envelope(client, "postmaster");
    const search = counted.total();
    expect(search).toBeGreaterThan(200);
    for (const to of ["postmaster", "POSTMASTER", "postmaster@mx.local.test"]) {
      const before = counted.total();
      expect(await client.command(`RCPT TO:<${to}>`)).toBe("250 2.1.5 Recipient OK");
      // Only the postmaster's own mailboxes: account, aliases and domain of postmaster@local.test and bob.
      expect(counted.total() - before).toBeLessThanOrEqual(8);
    }
    client.close();
    const again = await RawClient.connect(port);
    await envelope(again, "postmaster");
    again.close();
    expect(counted.calls.get("listDomains")).toBe(1);

    // No postmaster anywhere: the "no" is remembered as well.
    const none = await seededStore();
    await none.directory.removeAlias("postmaster@local.test");
    for (let i = 0; i < 200; i++) await none.directory.addDomain(`d${String(i).padStart(3, "0")}.test`);
    const countedNone = countingDirectory(none);
    const second = await start({ store: countedNone.store });
    const refused = await RawClient.connect(second.port);
    expect(await refused.reply()).toMatch(/^220 /);
    expect(await refused.command("HELO client.example")).toBe("250 mx.local.test");
    expect(await refused.command("MAIL FROM:<a@far.example>")).toBe("250 2.1.0 Sender OK");
    expect(await refused.command("RCPT TO:<postmaster>")).toBe("550 5.1.1 Mailbox unavailable: no such user here");
    const before = countedNone.total();
    for (let i = 0; i < 10; i++) expect(await refused.command("RCPT TO:<postmaster>")).toBe("550 5.1.1 Mailbox unavailable: no such user here");
    expect(countedNone.total()).toBe(before);
    expect(countedNone.calls.get("listDomains")).toBe(1);
    refused.close();
  });

  it("looks for the postmaster again at once when the one it found is gone", async () => {
    const { store, port } = await start();
    const client = await RawClient.connect(port);
    await envelope(client, "postmaster");
    await store.directory.removeAlias("postmaster@local.test");
    expect(await client.command("RCPT TO:<postmaster>")).toBe("550 5.1.1 Mailbox unavailable: no such user here");
    await store.directory.addAlias({ source: "postmaster@other-local.test", target: "carol@other-local.test" });
    expect(await client.command("RCPT TO:<postmaster>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("DATA")).toMatch(/^354 /);
    expect(await client.command("Subject: x\r\n\r\n.")).toMatch(/^250 /);
    expect((await storedMessages(store, "carol@other-local.test")).length).toBe(1);
    expect((await storedMessages(store, "bob@local.test")).length).toBe(1);
    client.close();
  });

  it("queues a recipient named twice in one transaction once, and answers each RCPT with 250", async () => {
    const { store, port } = await start({ allowLoopbackPlaintextAuth: true, relay: "queue" }, "submission");
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    await client.command("EHLO c");
    expect(await client.command(`AUTH PLAIN ${Buffer.from("\0alice@local.test\0alice-secret").toString("base64")}`)).toMatch(/^235 /);
    expect(await client.command("MAIL FROM:<alice@local.test>")).toBe("250 2.1.0 Sender OK");
    // The domain's case never matters; the local part's may, at the remote end, so X@ is someone else.
    for (const to of ["x@far.example", "x@FAR.Example", "X@far.example", "x@far.example", "bob@local.test", "BOB@Local.Test"]) {
      expect(await client.command(`RCPT TO:<${to}>`)).toBe("250 2.1.5 Recipient OK");
    }
    expect(await client.command("DATA")).toMatch(/^354 /);
    expect(await client.command("Subject: out\r\n\r\n.")).toMatch(/^250 /);
    const items = await store.queue!.list();
    expect(items.map((item) => item.recipients.map((r) => r.address))).toEqual([["x@far.example", "X@far.example", "bob@local.test"]]);
    client.close();
  });

  it("counts a repeated RCPT against maxRecipients", async () => {
    const { port } = await start({ limits: { maxRecipients: 2 } });
    const client = await RawClient.connect(port);
    await envelope(client);
    expect(await client.command("RCPT TO:<bob@local.test>")).toBe("250 2.1.5 Recipient OK");
    expect(await client.command("RCPT TO:<bob@local.test>")).toBe("452 4.5.3 Too many recipients");
    client.close();
  });
});

describe("limits and shutdown", () => {
  it("connections over the per-address limit get 421 4.7.0 at the greeting", async () => {
    const { port } = await start({ limits: { maxConnectionsPerAddress: 1 } });
    const first = await RawClient.connect(port);
    expect(await first.reply()).toMatch(/^220 /);
    const second = await RawClient.connect(port);
    expect(await second.reply()).toBe("421 4.7.0 mx.local.test too many connections, try again later");
    await second.waitClosed();
    first.close();
  });

  it("close(): idle sessions get 421 4.3.2; a message in DATA may finish first", async () => {
    const { store, server, port } = await start();
    const idle = await RawClient.connect(port);
    expect(await idle.reply()).toMatch(/^220 /);
    const busy = await RawClient.connect(port);
    await envelope(busy);
    expect(await busy.command("DATA")).toMatch(/^354 /);
    busy.write("Subject: in flight\r\n\r\n");
    await new Promise((r) => setTimeout(r, 50));

    const closing = server.close({ deadlineMs: 5000 });
    expect(await idle.reply()).toBe("421 4.3.2 mx.local.test shutting down");
    await idle.waitClosed();
    busy.write("last line\r\n.\r\n");
    expect(await busy.reply()).toMatch(/^250 2\.0\.0 OK/);
    expect(await busy.reply()).toBe("421 4.3.2 mx.local.test shutting down");
    await busy.waitClosed();
    await closing;
    expect(server.sessionCount).toBe(0);
    expect((await storedMessages(store, "bob@local.test")).length).toBe(1);
    await expect(RawClient.connect(port)).rejects.toThrow();
  });

  it("close(): the deadline drops a transaction that does not finish; nothing is stored", async () => {
    const { store, server, port } = await start();
    const busy = await RawClient.connect(port);
    await envelope(busy);
    expect(await busy.command("DATA")).toMatch(/^354 /);
    busy.write("Subject: never ends\r\n\r\n");
    await new Promise((r) => setTimeout(r, 50));
    await server.close({ deadlineMs: 200 });
    await busy.waitClosed();
    expect(server.sessionCount).toBe(0);
    expect(await storedMessages(store, "bob@local.test")).toEqual([]);
  });
});

describe("login cache", () => {
  it("accepts a password again without change in the answer, and refuses it once changed", async () => {
    const { store, port } = await start({ allowLoopbackPlaintextAuth: true }, "submission");
    const plain = (password: string) => `AUTH PLAIN ${Buffer.from(`\0alice@local.test\0${password}`).toString("base64")}`;
    const attempt = async (password: string): Promise<string> => {
      const client = await RawClient.connect(port);
      await client.reply();
      await client.command("EHLO c");
      const reply = await client.command(plain(password));
      client.close();
      return reply;
    };
    expect(await attempt("alice-secret")).toBe("235 2.7.0 Authentication successful");
    expect(await attempt("alice-secret")).toBe("235 2.7.0 Authentication successful");
    expect(await attempt("alice-secret ")).toBe("535 5.7.8 Authentication credentials invalid");
    await store.directory.setPasswordHash("alice@local.test", await hashPassword("rotated", { logN: 10 }));
    expect(await attempt("alice-secret")).toBe("535 5.7.8 Authentication credentials invalid");
    expect(await attempt("rotated")).toBe("235 2.7.0 Authentication successful");
  });
});

describe("logging", () => {
  it("logs session events with the session id, never passwords or message text", async () => {
    const lines: string[] = [];
    const make = (bindings: Record<string, unknown>): import("@mailroom/store").Logger => {
      const log = (fields: unknown, message?: string) => lines.push(JSON.stringify({ ...bindings, fields, message }));
      return { debug: log, info: log, warn: log, error: log, child: (more) => make({ ...bindings, ...more }) };
    };
    const { port } = await start({ logger: make({}), allowLoopbackPlaintextAuth: true }, "submission");
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    await client.command("EHLO c");
    const bad = Buffer.from("\0alice@local.test\0hunter2-wrong").toString("base64");
    const good = Buffer.from("\0alice@local.test\0alice-secret").toString("base64");
    expect(await client.command(`AUTH PLAIN ${bad}`)).toMatch(/^535 /);
    expect(await client.command(`AUTH PLAIN ${good}`)).toMatch(/^235 /);
    await client.command("MAIL FROM:<alice@local.test>");
    await client.command("RCPT TO:<bob@local.test>");
    await client.command("DATA");
    expect(await client.command("Subject: top secret body text\r\n\r\n.")).toMatch(/^250 /);
    await client.command("QUIT");
    await client.waitClosed();
    await waitFor(() => lines.some((l) => l.includes('"close"')));
    const all = lines.join("\n");
    for (const secret of ["hunter2-wrong", "alice-secret", bad, good, "top secret body text"]) expect(all).not.toContain(secret);
    const sessionLines = lines.filter((l) => l.includes('"session"'));
    expect(sessionLines.length).toBeGreaterThanOrEqual(8);
    for (const event of ["connect", "helo", "auth failed", "auth ok", "mail from", "rcpt", "message done", "close"]) {
      expect(sessionLines.some((l) => l.includes(`"message":"${event}"`)), event).toBe(true);
    }
  });
});

describe("AUTH hooks and throttle", () => {
  it("onAuth replaces the password check; onMailFrom adds a sender check", async () => {
    const base = await seededStore();
    const alice = (await base.directory.getAccount("alice@local.test"))!;
    const { port } = await start(
      {
        store: base,
        allowLoopbackPlaintextAuth: true,
        hooks: {
          onAuth: (login, password) => (login === "token" && password === "t0ken" ? alice : null),
          onMailFrom: (address) => (address.startsWith("alice") ? { reject: "permanent", message: "use info@" } : { ok: true }),
        },
      },
      "submission",
    );
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    await client.command("EHLO c");
    expect(await client.command(`AUTH PLAIN ${Buffer.from("\0alice@local.test\0alice-secret").toString("base64")}`)).toBe("535 5.7.8 Authentication credentials invalid");
    expect(await client.command(`AUTH PLAIN ${Buffer.from("\0token\0t0ken").toString("base64")}`)).toBe("235 2.7.0 Authentication successful");
    expect(await client.command("MAIL FROM:<alice@local.test>")).toBe("550 5.7.1 use info@");
    expect(await client.command("MAIL FROM:<info@local.test>")).toBe("250 2.1.0 Sender OK");
    client.close();
  });

  it("a throttled login is refused with 454 4.7.0 without checking the password", async () => {
    const { port } = await start(
      { allowLoopbackPlaintextAuth: true, loginThrottle: createLoginThrottle({ freeFailures: 5, refuseAfter: 2 }) },
      "submission",
    );
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    await client.command("EHLO c");
    const bad = `AUTH PLAIN ${Buffer.from("\0alice@local.test\0nope").toString("base64")}`;
    expect(await client.command(bad)).toBe("535 5.7.8 Authentication credentials invalid");
    expect(await client.command(bad)).toBe("535 5.7.8 Authentication credentials invalid");
    expect(await client.command(`AUTH PLAIN ${Buffer.from("\0alice@local.test\0alice-secret").toString("base64")}`)).toBe("454 4.7.0 Temporary authentication failure");
    client.close();
  });
});

describe("pipelining", () => {
  it("answers a pipelined batch with one write, and each unpipelined command with its own", async () => {
    const { port } = await start();
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    expect(await client.command("HELO client.example")).toBe("250 mx.local.test");
    const writes = vi.spyOn(Connection.prototype, "write");
    try {
      client.write("MAIL FROM:<a@far.example>\r\nRCPT TO:<bob@local.test>\r\nRCPT TO:<nobody@local.test>\r\nDATA\r\n");
      expect(await client.reply()).toBe("250 2.1.0 Sender OK");
      expect(await client.reply()).toBe("250 2.1.5 Recipient OK");
      expect(await client.reply()).toMatch(/^550 5\.1\.1 /);
      expect(await client.reply()).toMatch(/^354 /);
      expect(writes.mock.calls.map((call) => String(call[0]))).toEqual([
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 Mailbox unavailable: no such user here\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n",
      ]);
      writes.mockClear();
      expect(await client.command("Subject: pipelined\r\n\r\nbody\r\n.")).toMatch(/^250 2\.0\.0 /);
      expect(await client.command("NOOP")).toBe("250 2.0.0 OK");
      expect(writes).toHaveBeenCalledTimes(2);
    } finally {
      writes.mockRestore();
    }
    client.close();
  });

  it("does not hold replies without bound for a client that pipelines without end", async () => {
    const { port } = await start();
    const client = await RawClient.connect(port);
    expect(await client.reply()).toMatch(/^220 /);
    const writes = vi.spyOn(Connection.prototype, "write");
    try {
      client.write("NOOP\r\n".repeat(2000));
      for (let i = 0; i < 2000; i++) expect(await client.reply()).toBe("250 2.0.0 OK");
      // 2000 replies of 14 octets, at most 16 KiB held: several writes, none larger than the limit.
      expect(writes.mock.calls.length).toBeGreaterThan(1);
      for (const call of writes.mock.calls) expect(String(call[0]).length).toBeLessThanOrEqual(16 * 1024 + 64);
    } finally {
      writes.mockRestore();
    }
    client.close();
  });
});
