import { createServer, type Server } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Connection, HeldWrites, listen, runtimeName, TlsContext, type Listener, type ListenOptions, type RejectReason } from "../src/index.js";
import { connectPlain, connectTls, eventually, makeCert, sleep, upgradeClient, type Cert, type LineClient } from "./helpers.js";

let certA: Cert;
let certB: Cert;

beforeAll(async () => {
  [certA, certB] = await Promise.all([makeCert(), makeCert()]);
});

/**
 * A tiny line protocol, enough to exercise the seam the way SMTP and POP3 do:
 * `ECHO x` → `x`; `STARTTLS` → `220 go ahead`, then TLS; `INFO` → what the connection knows of itself;
 * `QUIT` → `221 bye` and end. Every line the session sees is recorded.
 */
interface Session {
  readonly connection: Connection;
  readonly lines: string[];
  closes: number;
  timeouts: number;
}

function startSession(connection: Connection, tls: TlsContext | undefined, sessions: Session[]): Session {
  const session: Session = { connection, lines: [], closes: 0, timeouts: 0 };
  sessions.push(session);
  let buffer = "";
  let upgrading = false;
  const onLine = (line: string): "stop" | void => {
    session.lines.push(line);
    if (line.startsWith("ECHO ")) connection.write(`${line.slice(5)}\r\n`);
    else if (line === "INFO") connection.write(`${connection.secure ? "secure" : "plain"} ${connection.remoteAddress} ${connection.isLoopback}\r\n`);
    else if (line === "QUIT") connection.end("221 bye\r\n");
    else if (line === "STARTTLS" && tls) {
      connection.write("220 go ahead\r\n");
      upgrading = true;
      // Whatever came after the command in the clear is dropped here, as the protocols must do.
      buffer = "";
      connection.upgradeToTls(tls, 2_000).then(
        () => (upgrading = false),
        () => {},
      );
      return "stop";
    } else connection.write(`500 what is ${JSON.stringify(line)}\r\n`);
  };
  connection.start({
    data(chunk) {
      if (upgrading) return;
      buffer += Buffer.from(chunk).toString("latin1");
      let end: number;
      while ((end = buffer.indexOf("\r\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (onLine(line) === "stop") return;
      }
    },
    close() {
      session.closes++;
    },
    timeout() {
      session.timeouts++;
      connection.end("421 idle too long\r\n");
    },
  });
  return session;
}

const listeners: Listener[] = [];
const clients: LineClient[] = [];
let sessions: Session[] = [];

async function serve(
  options: Partial<ListenOptions> & { tls?: TlsContext },
  onConnection?: (connection: Connection) => void,
): Promise<Listener> {
  const listener = await listen({
    host: "127.0.0.1",
    port: 0,
    onConnection: onConnection ?? ((c) => startSession(c, options.tls, sessions)),
    ...options,
  });
  listeners.push(listener);
  return listener;
}

function track<T extends LineClient>(client: T): T {
  clients.push(client);
  return client;
}

/** One server-side connection with no session on it, and what its client has received so far. */
async function bareConnection(): Promise<{ connection: Connection; client: LineClient; received: () => string }> {
  let connection: Connection | undefined;
  const listener = await serve({}, (c) => {
    connection = c;
    c.start({ data: () => {}, close: () => {} });
  });
  const client = track(await connectPlain(listener.port));
  await eventually(() => connection !== undefined);
  let received = "";
  client.socket.on("data", (data: string) => (received += data));
  return { connection: connection!, client, received: () => received };
}

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  for (const listener of listeners.splice(0)) {
    for (const connection of listener.connections()) connection.destroy();
    await listener.close();
  }
  sessions = [];
});

describe("plain connections", () => {
  it("listens on a free port and carries lines both ways", async () => {
    const listener = await serve({});
    expect(listener.port).toBeGreaterThan(0);
    expect(listener.implicitTls).toBe(false);
    const client = track(await connectPlain(listener.port));
    client.write("ECHO hello\r\nINFO\r\n");
    expect(await client.readLine()).toBe("hello");
    expect(await client.readLine()).toBe("plain 127.0.0.1 true");
    const [session] = sessions;
    expect(session!.connection.localPort).toBe(listener.port);
    expect(session!.connection.remotePort).toBe(client.socket.localPort);
    expect(session!.connection.id).toMatch(/^[0-9a-z]+$/);
    expect(listener.size).toBe(1);
    expect([...listener.connections()]).toEqual([session!.connection]);
  });

  it("tells a session with inputEnd that the client half-closed, after its data, and keeps the way back open", async () => {
    const heard: string[] = [];
    const listener = await serve({}, (c) => {
      c.start({
        data: (chunk) => heard.push(Buffer.from(chunk).toString("latin1")),
        inputEnd: () => {
          heard.push("<end>");
          // Answer only now, as a session answers a pipelined batch, then end our side.
          setTimeout(() => c.end(`got ${JSON.stringify(heard.join(""))}\r\n`), 50);
        },
        close: () => {},
      });
    });
    const client = track(await connectPlain(listener.port));
    client.write("ONE\r\nTWO\r\n");
    client.socket.end();
    expect(await client.readLine()).toBe('got "ONE\\r\\nTWO\\r\\n<end>"');
    await client.closed;
  });

  it("ends the connection at once when the client half-closes and the session has no inputEnd", async () => {
    const listener = await serve({});
    const client = track(await connectPlain(listener.port));
    client.write("ECHO still answered\r\n");
    expect(await client.readLine()).toBe("still answered");
    client.socket.end();
    await client.closed;
    await eventually(() => listener.size === 0);
  });

  it("reports the close once, and forgets the connection", async () => {
    const listener = await serve({});
    const client = track(await connectPlain(listener.port));
    client.write("QUIT\r\n");
    expect(await client.readLine()).toBe("221 bye");
    await client.closed;
    await eventually(() => sessions[0]!.closes === 1 && listener.size === 0);
    expect(sessions[0]!.connection.closed).toBe(true);
    expect(sessions[0]!.connection.write("late")).toBe(false);
    await sleep(50);
    expect(sessions[0]!.closes).toBe(1);
  });

  it("reports a close that happened before start()", async () => {
    let connection: Connection | undefined;
    const listener = await serve({}, (c) => (connection = c));
    const client = await connectPlain(listener.port);
    await eventually(() => connection !== undefined);
    client.close();
    await eventually(() => connection!.closed);
    let closes = 0;
    connection!.start({ data: () => {}, close: () => closes++ });
    expect(closes).toBe(1);
  });

  it("gives each client its own connection with distinct ids", async () => {
    const listener = await serve({});
    const a = track(await connectPlain(listener.port));
    const b = track(await connectPlain(listener.port));
    a.write("ECHO a\r\n");
    b.write("ECHO b\r\n");
    expect(await a.readLine()).toBe("a");
    expect(await b.readLine()).toBe("b");
    expect(sessions[0]!.connection.id).not.toBe(sessions[1]!.connection.id);
  });

  it("says when the kernel buffer is full and when it drained", async () => {
    let connection: Connection | undefined;
    const listener = await serve({}, (c) => {
      connection = c;
      c.start({ data: () => {}, close: () => {} });
    });
    const client = track(await connectPlain(listener.port));
    client.socket.pause();
    await eventually(() => connection !== undefined);
    const chunk = new Uint8Array(256 * 1024).fill(0x61);
    let written = 0;
    let drained = false;
    let wait: Promise<unknown>;
    // Fill until write() says "full" and the kernel stays full: some runtimes accept more
    // asynchronously after the first false, so one false alone proves little.
    for (;;) {
      while (connection!.write(chunk)) {
        written += chunk.length;
        if (written > 256 * 1024 * 1024) throw new Error("write never reported a full buffer");
      }
      written += chunk.length;
      drained = false;
      wait = connection!.drained().then(() => (drained = true));
      await sleep(100);
      if (!drained) break;
    }
    let received = 0;
    client.socket.on("data", (data: string) => (received += data.length));
    client.socket.resume();
    await wait;
    expect(drained).toBe(true);
    await eventually(() => received === written, 10_000);
  });

  it("writes several parts as one write, in order, and reports backpressure the way write() does", async () => {
    const { connection, client, received } = await bareConnection();
    expect(connection.writeParts(["+OK 5 octets\r\n", new TextEncoder().encode("hello"), Buffer.from("\r\n.\r\n")])).toBe(true);
    expect(connection.writeParts(["one part\r\n"])).toBe(true);
    await eventually(() => received() === "+OK 5 octets\r\nhello\r\n.\r\none part\r\n");
    // A reader that stops reading: writeParts, like write, eventually says "wait for drained()".
    client.socket.pause();
    const big = new Uint8Array(256 * 1024).fill(0x62);
    let full = false;
    for (let i = 0; i < 1024 && !full; i++) full = !connection.writeParts(["x", big]);
    expect(full).toBe(true);
    client.socket.resume();
    await connection.drained();
  });

  it("holds replies until flushed and sends them in one write, never more than the limit at once", async () => {
    const { connection, received } = await bareConnection();
    const writes: string[] = [];
    const original = connection.writeParts.bind(connection);
    connection.writeParts = (parts) => {
      writes.push(parts.map((p) => (typeof p === "string" ? p : Buffer.from(p).toString("latin1"))).join(""));
      return original(parts);
    };
    const replies = new HeldWrites(connection, 32);
    expect(replies.write(["not held\r\n"])).toBe(true);
    replies.hold();
    expect(replies.write(["+OK one\r\n"])).toBe(true);
    expect(replies.write(["+OK two\r\n", new TextEncoder().encode("body\r\n")])).toBe(true);
    await sleep(50);
    expect(received()).toBe("not held\r\n");
    expect(replies.flush()).toBe(true);
    await eventually(() => received() === "not held\r\n+OK one\r\n+OK two\r\nbody\r\n");
    // Past the limit (32 octets here) what is held goes out at once.
    replies.write(["a".repeat(20)]);
    replies.write(["b".repeat(20)]);
    replies.write(["dropped"]);
    replies.discard();
    expect(replies.release()).toBe(true);
    replies.write(["after\r\n"]);
    await eventually(() => received().endsWith("after\r\n"));
    expect(writes).toEqual(["not held\r\n", "+OK one\r\n+OK two\r\nbody\r\n", "a".repeat(20) + "b".repeat(20), "after\r\n"]);
    expect(received()).not.toContain("dropped");
  });

  it("ends an idle connection through the session's timeout handler", async () => {
    const listener = await serve({}, (c) => {
      startSession(c, undefined, sessions);
      c.setIdleTimeout(200);
    });
    const client = track(await connectPlain(listener.port));
    const started = Date.now();
    expect(await client.readLine(5_000)).toBe("421 idle too long");
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    await client.closed;
    expect(sessions[0]!.timeouts).toBe(1);
  });

  it("keeps a busy connection alive past the idle timeout", async () => {
    const listener = await serve({}, (c) => {
      startSession(c, undefined, sessions);
      c.setIdleTimeout(300);
    });
    const client = track(await connectPlain(listener.port));
    for (let i = 0; i < 6; i++) {
      await sleep(100);
      client.write(`ECHO ${i}\r\n`);
      expect(await client.readLine()).toBe(String(i));
    }
    expect(sessions[0]!.timeouts).toBe(0);
  });

  it("destroys an idle connection whose session has no timeout handler", async () => {
    const listener = await serve({}, (c) => {
      c.start({ data: () => {}, close: () => {} });
      c.setIdleTimeout(100);
    });
    const client = track(await connectPlain(listener.port));
    await client.closed;
    expect(client.pending).toBe("");
  });

  it("stops accepting on close() but keeps open connections", async () => {
    const listener = await serve({});
    const client = track(await connectPlain(listener.port));
    client.write("ECHO before\r\n");
    expect(await client.readLine()).toBe("before");
    await Promise.race([listener.close(), sleep(100)]);
    await expect(connectPlain(listener.port)).rejects.toThrow();
    client.write("ECHO after\r\n");
    expect(await client.readLine()).toBe("after");
  });
});

describe("limits", () => {
  const refusals: Array<{ reason: RejectReason; address: string }> = [];
  const refuse = (connection: Connection, reason: RejectReason): void => {
    refusals.push({ reason, address: connection.remoteAddress });
    connection.end(`421 too many connections (${reason})\r\n`);
  };
  afterEach(() => {
    refusals.length = 0;
  });

  it("refuses connections over the per-address limit through onRejected", async () => {
    const listener = await serve({ maxConnectionsPerAddress: 2, onRejected: refuse });
    const a = track(await connectPlain(listener.port));
    const b = track(await connectPlain(listener.port));
    const c = track(await connectPlain(listener.port));
    expect(await c.readLine()).toBe("421 too many connections (per-address)");
    await c.closed;
    expect(refusals).toEqual([{ reason: "per-address", address: "127.0.0.1" }]);
    expect(listener.size).toBe(2);
    // Another client address has its own allowance.
    const other = track(await connectPlain(listener.port, "127.0.0.2"));
    other.write("ECHO other\r\n");
    expect(await other.readLine()).toBe("other");
    // A slot frees up when a connection ends.
    a.write("QUIT\r\n");
    await a.closed;
    await eventually(() => listener.size === 2);
    const d = track(await connectPlain(listener.port));
    d.write("ECHO d\r\n");
    expect(await d.readLine()).toBe("d");
    b.write("ECHO b\r\n");
    expect(await b.readLine()).toBe("b");
  });

  it("refuses connections over the listener's capacity through onRejected", async () => {
    const listener = await serve({ maxConnections: 1, onRejected: refuse });
    const a = track(await connectPlain(listener.port));
    a.write("ECHO a\r\n");
    expect(await a.readLine()).toBe("a");
    const b = track(await connectPlain(listener.port, "127.0.0.3"));
    expect(await b.readLine()).toBe("421 too many connections (capacity)");
    expect(refusals).toEqual([{ reason: "capacity", address: "127.0.0.3" }]);
    expect(listener.size).toBe(1);
  });

  it("closes refused connections without a word when there is no onRejected", async () => {
    const listener = await serve({ maxConnections: 1 });
    track(await connectPlain(listener.port));
    const b = track(await connectPlain(listener.port));
    await b.closed;
    expect(b.pending).toBe("");
  });
});

describe("TLS", () => {
  it("upgrades a plain connection (STARTTLS) and drops what was sent in the clear after the command", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls });
    const plain = track(await connectPlain(listener.port));
    plain.write("INFO\r\n");
    expect(await plain.readLine()).toBe("plain 127.0.0.1 true");
    // The classic injection: a command pipelined in the clear behind STARTTLS.
    plain.write("STARTTLS\r\nECHO injected\r\n");
    expect(await plain.readLine()).toBe("220 go ahead");
    const secure = track(await upgradeClient(plain, certA.cert));
    expect((secure.socket as import("node:tls").TLSSocket).authorized).toBe(true);
    secure.write("INFO\r\nECHO inside\r\n");
    expect(await secure.readLine()).toBe("secure 127.0.0.1 true");
    expect(await secure.readLine()).toBe("inside");
    const session = sessions[0]!;
    expect(session.lines).toEqual(["INFO", "STARTTLS", "INFO", "ECHO inside"]);
    expect(session.connection.secure).toBe(true);
    expect(session.connection.tls?.protocol).toMatch(/^TLSv1\.[23]$/);
    expect(session.connection.tls?.cipher).toBeTruthy();
    await expect(session.connection.upgradeToTls(tls)).rejects.toThrow(/already secure/);
  });

  it("never hands plain text sent after the go-ahead to the session", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls });
    const plain = track(await connectPlain(listener.port));
    plain.write("STARTTLS\r\n");
    expect(await plain.readLine()).toBe("220 go ahead");
    // Not a TLS record: the handshake fails and the connection ends, without the line being seen.
    plain.write("ECHO sneaky\r\n");
    await plain.closed;
    await eventually(() => sessions[0]!.connection.closed);
    expect(sessions[0]!.lines).toEqual(["STARTTLS"]);
    expect(sessions[0]!.connection.secure).toBe(false);
  });

  it("gives up an upgrade whose client never starts the handshake", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    let outcome: Promise<unknown> | undefined;
    let connection: Connection | undefined;
    let closes = 0;
    const listener = await serve({ tls }, (c) => {
      connection = c;
      c.start({ data: () => {}, close: () => closes++ });
      outcome = c.upgradeToTls(tls, 200);
    });
    const client = track(await connectPlain(listener.port));
    await eventually(() => outcome !== undefined);
    await expect(outcome).rejects.toThrow(/timed out/);
    await client.closed;
    await eventually(() => connection!.closed);
    // The session hears of it like of any other close.
    expect(closes).toBe(1);
  });

  it("speaks TLS from the first byte on an implicit-TLS listener", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls, implicitTls: true });
    expect(listener.implicitTls).toBe(true);
    const client = track(await connectTls(listener.port, certA.cert));
    client.write("INFO\r\nECHO over tls\r\n");
    expect(await client.readLine()).toBe("secure 127.0.0.1 true");
    expect(await client.readLine()).toBe("over tls");
    expect(sessions[0]!.connection.secure).toBe(true);
  });

  it("drops a client that speaks plain text to an implicit-TLS listener", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls, implicitTls: true, handshakeTimeoutMs: 500 });
    const client = track(await connectPlain(listener.port));
    client.write("USER alice\r\n");
    await client.closed;
    expect(sessions).toHaveLength(0);
  });

  it("counts sockets still in their TLS handshake against the connection limits", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const dropped: Array<{ remote: string; reason: RejectReason }> = [];
    const listener = await serve({
      tls,
      implicitTls: true,
      maxConnectionsPerAddress: 2,
      handshakeTimeoutMs: 1_000,
      onDropped: (remote, reason) => dropped.push({ remote, reason }),
    });
    // Two silent sockets that never start their handshake hold both of this address's slots.
    const a = track(await connectPlain(listener.port));
    const b = track(await connectPlain(listener.port));
    const third = track(await connectPlain(listener.port));
    await third.closed;
    expect(third.pending).toBe("");
    expect(dropped).toEqual([{ remote: "127.0.0.1", reason: "per-address" }]);
    expect(a.socket.destroyed || b.socket.destroyed).toBe(false);
    // Another address still gets in.
    const other = track(await connectTls(listener.port, certA.cert, "127.0.0.2"));
    other.write("ECHO other\r\n");
    expect(await other.readLine()).toBe("other");
    // The handshake timeout frees both slots, and they are given out again.
    await Promise.all([a.closed, b.closed]);
    const next = track(await connectTls(listener.port, certA.cert));
    next.write("ECHO next\r\n");
    expect(await next.readLine()).toBe("next");
  });

  it("drops sockets still in their handshake when the listener closes", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls, implicitTls: true, handshakeTimeoutMs: 20_000 });
    const silent = track(await connectPlain(listener.port));
    const started = Date.now();
    await listener.close();
    await silent.closed;
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("refuses an implicit-TLS listener without a certificate", async () => {
    await expect(listen({ host: "127.0.0.1", port: 0, implicitTls: true, onConnection: () => {} })).rejects.toThrow(
      /certificate/,
    );
  });

  it("serves a reloaded certificate to new connections, on both kinds of listener", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const implicit = await serve({ tls, implicitTls: true });
    const starttls = await serve({ tls });
    const both = [certA.cert, certB.cert];
    const fingerprint = (client: LineClient): string =>
      (client.socket as import("node:tls").TLSSocket).getPeerCertificate().fingerprint256;
    const viaStarttls = async (): Promise<LineClient> => {
      const plain = track(await connectPlain(starttls.port));
      plain.write("STARTTLS\r\n");
      expect(await plain.readLine()).toBe("220 go ahead");
      return track(await upgradeClient(plain, both));
    };

    const before = track(await connectTls(implicit.port, both));
    expect(fingerprint(before)).toBe(certA.fingerprint256);
    expect(fingerprint(await viaStarttls())).toBe(certA.fingerprint256);

    let reloads = 0;
    const unsubscribe = tls.onReload(() => reloads++);
    tls.reload({ cert: certB.cert, key: certB.key });
    expect(reloads).toBe(1);
    unsubscribe();

    expect(fingerprint(track(await connectTls(implicit.port, both)))).toBe(certB.fingerprint256);
    expect(fingerprint(await viaStarttls())).toBe(certB.fingerprint256);
    // A running session keeps working on its old certificate.
    before.write("ECHO still here\r\n");
    expect(await before.readLine()).toBe("still here");

    // Bad material is refused and the current certificate stays.
    expect(() => tls.reload({ cert: "not a certificate", key: "not a key" })).toThrow();
    expect(() => tls.reload({ cert: certA.cert, key: certB.key })).toThrow();
    expect(reloads).toBe(1);
    expect(fingerprint(track(await connectTls(implicit.port, both)))).toBe(certB.fingerprint256);
  });

  it("accepts certificate and key as bytes", async () => {
    const tls = new TlsContext({ cert: new TextEncoder().encode(certA.cert), key: new TextEncoder().encode(certA.key) });
    const listener = await serve({ tls, implicitTls: true });
    const client = track(await connectTls(listener.port, certA.cert));
    client.write("ECHO bytes\r\n");
    expect(await client.readLine()).toBe("bytes");
  });

  it("refuses TLS 1.1 and below", async () => {
    const tls = new TlsContext({ cert: certA.cert, key: certA.key });
    const listener = await serve({ tls, implicitTls: true });
    const { connect } = await import("node:tls");
    await expect(
      new Promise((resolve, reject) => {
        const socket = connect(
          { host: "127.0.0.1", port: listener.port, ca: certA.cert, servername: "localhost", maxVersion: "TLSv1.1", minVersion: "TLSv1" },
          () => resolve(socket),
        );
        socket.once("error", reject);
      }),
    ).rejects.toThrow();
  });
});

describe("listen errors and runtime", () => {
  let blocker: Server;
  let blockedPort = 0;
  beforeAll(async () => {
    blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const address = blocker.address();
    blockedPort = typeof address === "object" && address ? address.port : 0;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => blocker.close(() => resolve()));
  });

  it("rejects a port in use, naming the address", async () => {
    const attempt = listen({ host: "127.0.0.1", port: blockedPort, onConnection: () => {} });
    await expect(attempt).rejects.toThrow(`cannot listen on 127.0.0.1:${blockedPort}: address already in use`);
  });

  it("rejects an address that is not on this machine", async () => {
    await expect(listen({ host: "192.0.2.1", port: 0, onConnection: () => {} })).rejects.toThrow(/192\.0\.2\.1/);
  });

  it("knows which runtime runs it", () => {
    expect(["node", "bun", "deno"]).toContain(runtimeName());
  });
});
