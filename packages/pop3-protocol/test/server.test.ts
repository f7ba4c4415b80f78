import { afterEach, describe, expect, it, vi } from "vitest";
import { Connection } from "@mailroom/transport";
import { StoreError, hashPassword, type Logger, type Mailbox, type Store } from "@mailroom/store";
import { ALICE, fixtureStore, LineClient, loginClient, startServer, type Running } from "./helpers.js";

let running: Running | undefined;
afterEach(async () => {
  await running?.close();
  running = undefined;
});

/** The memory store, with one mailbox operation replaced: a real store that fails on cue. */
function withMailbox(store: Store, change: (mailbox: Mailbox) => Partial<Mailbox>): Store {
  return Object.create(store, {
    mailbox: { value: (id: string) => Object.assign(Object.create(store.mailbox(id)) as Mailbox, change(store.mailbox(id))) },
  }) as Store;
}

describe("UPDATE state", () => {
  it("answers -ERR [SYS/TEMP] and deletes nothing when expunge fails", async () => {
    const store = withMailbox(await fixtureStore(), () => ({
      expunge: async () => {
        throw new StoreError("unavailable", "memory: pretend the disk went away");
      },
    }));
    running = await startServer({ store });
    const client = await loginClient(running.port);
    client.write("DELE 1\r\nQUIT\r\n");
    expect(await client.line()).toBe("+OK message 1 deleted");
    expect(await client.line()).toBe(
      "-ERR [SYS/TEMP] could not update the mailbox, no messages were deleted, try again later",
    );
    expect(await client.line()).toBeNull();
    expect(await store.mailbox(ALICE.login).list()).toHaveLength(3);
    // The lease was released: the next session gets in.
    (await loginClient(running.port)).destroy();
  });

  it("records retrieval times at QUIT, and only for RETR", async () => {
    running = await startServer();
    const client = await loginClient(running.port);
    client.write("RETR 1\r\nTOP 2 0\r\nQUIT\r\n");
    await client.until("signing off");
    const [m1, m2] = await running.store.mailbox(ALICE.login).list();
    expect(m1!.retrievedAt).toBeTypeOf("number");
    expect(m2!.retrievedAt).toBeNull();
  });

  it("does not record retrievals of a session that never quit", async () => {
    running = await startServer();
    const client = await loginClient(running.port);
    client.write("RETR 1\r\n");
    await client.until("\r\n.\r\n");
    client.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect((await running.store.mailbox(ALICE.login).list())[0]!.retrievedAt).toBeNull();
  });
});

describe("store errors at login", () => {
  it("maps a failing listing to [SYS/TEMP] and frees the mailbox", async () => {
    let fail = true;
    const store = withMailbox(await fixtureStore(), (real) => ({
      list: async () => {
        if (fail) throw new StoreError("temporary", "memory: flaky");
        return real.list();
      },
    }));
    running = await startServer({ store });
    const client = await LineClient.connect(running.port);
    await client.line();
    client.write(`USER ${ALICE.login}\r\nPASS ${ALICE.password}\r\n`);
    await client.line();
    expect(await client.line()).toBe("-ERR [SYS/TEMP] cannot open the mailbox, try again later");
    fail = false;
    client.write(`USER ${ALICE.login}\r\nPASS ${ALICE.password}\r\n`);
    await client.line();
    expect(await client.line()).toBe("+OK 3 messages (150 octets)");
    client.destroy();
  });
});

describe("login cache", () => {
  it("refuses a password changed while the server runs at once, though it was just used", async () => {
    running = await startServer();
    const attempt = async (password: string): Promise<string | null> => {
      const client = await LineClient.connect(running!.port);
      await client.line();
      client.write(`USER ${ALICE.login}\r\nPASS ${password}\r\nQUIT\r\n`);
      await client.line();
      const reply = await client.line();
      client.destroy();
      return reply;
    };
    // The second login takes the password from the cache; the answer is the same.
    expect(await attempt(ALICE.password)).toBe("+OK 3 messages (150 octets)");
    expect(await attempt(ALICE.password)).toBe("+OK 3 messages (150 octets)");
    await running.store.directory.setPasswordHash(ALICE.login, await hashPassword("new secret", { logN: 10 }));
    expect(await attempt(ALICE.password)).toBe("-ERR [AUTH] invalid user name or password");
    expect(await attempt("new secret")).toBe("+OK 3 messages (150 octets)");
  });
});

describe("lease", () => {
  it("is renewed while the session lives, so a long session keeps the mailbox", async () => {
    running = await startServer({ leaseTtlMs: 300 });
    const first = await loginClient(running.port);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const second = await LineClient.connect(running.port);
    await second.line();
    second.write(`USER ${ALICE.login}\r\nPASS ${ALICE.password}\r\n`);
    await second.line();
    expect(await second.line()).toBe("-ERR [IN-USE] mailbox is in use by another session");
    first.write("DELE 1\r\nQUIT\r\n");
    await first.line();
    expect(await first.line()).toMatch(/^\+OK .*\(1 message deleted\)$/);
    second.destroy();
  });
});

describe("lease lost", () => {
  it("ends the session with [SYS/TEMP] and deletes nothing when the lease cannot be renewed", async () => {
    const store = withMailbox(await fixtureStore(), (real) => ({
      acquireLease: async (options) => {
        const lease = await real.acquireLease(options);
        return Object.assign(Object.create(lease) as typeof lease, {
          renew: async () => {
            throw new StoreError("lease-lost", "memory: pretend another host took over");
          },
        });
      },
    }));
    running = await startServer({ store, leaseTtlMs: 90 });
    const client = await loginClient(running.port);
    client.write("DELE 1\r\n");
    expect(await client.line()).toBe("+OK message 1 deleted");
    expect(await client.line()).toBe("-ERR [SYS/TEMP] mailbox lock lost, please reconnect");
    expect(await client.line()).toBeNull();
    expect(await store.mailbox(ALICE.login).list()).toHaveLength(3);
  });
});

describe("shutdown", () => {
  it("ends unauthenticated sessions at once, lets logged-in ones finish, then drops them without deleting", async () => {
    running = await startServer();
    const { server, store, port } = running;
    const loggedIn = await loginClient(port);
    loggedIn.write("DELE 1\r\n");
    expect(await loggedIn.line()).toBe("+OK message 1 deleted");
    const waiting = await LineClient.connect(port);
    expect(await waiting.line()).toMatch(/^\+OK /);
    expect(server.sessionCount).toBe(2);

    const closed = server.close({ deadlineMs: 1000 });
    expect(await waiting.line()).toBe("-ERR [SYS/TEMP] server shutting down");
    expect(await waiting.line()).toBeNull();
    loggedIn.write("STAT\r\n");
    expect(await loggedIn.line()).toBe("+OK 2 97");
    expect(await loggedIn.line()).toBe("-ERR [SYS/TEMP] server shutting down");
    expect(await loggedIn.line()).toBeNull();
    await closed;
    expect(server.sessionCount).toBe(0);
    expect(await store.mailbox(ALICE.login).list()).toHaveLength(3);
    const lease = await store.mailbox(ALICE.login).acquireLease({ holder: "test", ttlMs: 1000 });
    await lease.release();
    running = undefined;
  });

  it("lets a QUIT during shutdown commit", async () => {
    running = await startServer();
    const { server, store, port } = running;
    const client = await loginClient(port);
    const closed = server.close({ deadlineMs: 5000 });
    client.write("DELE 3\r\nQUIT\r\n");
    expect(await client.line()).toBe("+OK message 3 deleted");
    expect(await client.line()).toMatch(/\(1 message deleted\)$/);
    await closed;
    expect(await store.mailbox(ALICE.login).list()).toHaveLength(2);
    running = undefined;
  });
});

describe("limits", () => {
  it("refuses connections over the per-address limit with -ERR", async () => {
    running = await startServer({ maxConnectionsPerAddress: 1 });
    const first = await LineClient.connect(running.port);
    expect(await first.line()).toMatch(/^\+OK /);
    const second = await LineClient.connect(running.port);
    expect(await second.line()).toBe("-ERR [SYS/TEMP] too many connections, try again later");
    expect(await second.line()).toBeNull();
    first.destroy();
  });

  it("keeps reading pipelined commands in order while a long reply is written", async () => {
    running = await startServer();
    const client = await loginClient(running.port);
    client.write("RETR 1\r\n".repeat(200) + "NOOP\r\n");
    for (let i = 0; i < 200; i++) expect((await client.until("\r\n.\r\n")).toString()).toMatch(/^\+OK 53 octets\r\n/);
    expect(await client.line()).toBe("+OK");
    client.destroy();
  });
});

describe("logging", () => {
  it("tags every line with the session and never logs a password", async () => {
    const lines: Array<Record<string, unknown>> = [];
    const make = (bindings: Record<string, unknown>): Logger => {
      const log =
        (level: string) =>
        (a: Record<string, unknown> | string, b?: string): void => {
          lines.push(typeof a === "string" ? { ...bindings, level, msg: a } : { ...bindings, ...a, level, msg: b });
        };
      return { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error"), child: (more) => make({ ...bindings, ...more }) };
    };
    running = await startServer({ logger: make({}) });
    const client = await LineClient.connect(running.port);
    await client.line();
    client.write(`USER ${ALICE.login}\r\nPASS wrong secret\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABjb3JyZWN0IGhvcnNl\r\nQUIT\r\n`);
    await client.until("signing off");
    await client.waitClosed();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const sessionLines = lines.filter((l) => l.msg !== "POP3 listening");
    expect(sessionLines.map((l) => l.msg)).toEqual(expect.arrayContaining(["connected", "login failed", "logged in", "quit", "disconnected"]));
    for (const line of sessionLines) expect(line.session).toBeTypeOf("string");
    const all = JSON.stringify(lines);
    expect(all).not.toContain("wrong secret");
    expect(all).not.toContain("correct horse");
    expect(all).not.toContain("AGFsaWNl");
  });
});

describe("pipelining", () => {
  type Writes = { calls(): string[]; clear(): void };

  /** A logged-in client and the session's socket writes (each call of writeParts is one write). */
  async function withWrites(test: (client: LineClient, writes: Writes) => Promise<void>): Promise<void> {
    running = await startServer();
    const client = await loginClient(running.port);
    const parts = vi.spyOn(Connection.prototype, "writeParts");
    const text = (call: readonly unknown[]): string =>
      (call[0] as readonly (string | Uint8Array)[]).map((p) => (typeof p === "string" ? p : Buffer.from(p).toString("latin1"))).join("");
    try {
      await test(client, { calls: () => parts.mock.calls.map(text), clear: () => parts.mockClear() });
    } finally {
      parts.mockRestore();
      client.destroy();
    }
  }

  it("answers pipelined commands with one write, and each unpipelined command with its own", () =>
    withWrites(async (client, writes) => {
      client.write("STAT\r\nUIDL 1\r\nDELE 2\r\nLIST 2\r\nNOOP\r\n");
      expect(await client.line()).toBe("+OK 3 150");
      expect(await client.line()).toBe("+OK 1 m1");
      expect(await client.line()).toBe("+OK message 2 deleted");
      expect(await client.line()).toBe("-ERR message 2 already deleted");
      expect(await client.line()).toBe("+OK");
      expect(writes.calls()).toEqual(["+OK 3 150\r\n+OK 1 m1\r\n+OK message 2 deleted\r\n-ERR message 2 already deleted\r\n+OK\r\n"]);
      writes.clear();
      client.write("NOOP\r\n");
      expect(await client.line()).toBe("+OK");
      client.write("RSET\r\n");
      expect(await client.line()).toMatch(/^\+OK/);
      expect(writes.calls()).toHaveLength(2);
    }));

  it("sends pipelined RETRs of small messages together, each message whole and in order", () =>
    withWrites(async (client, writes) => {
      client.write("RETR 1\r\nRETR 2\r\nRETR 3\r\n");
      const replies: string[] = [];
      for (let i = 0; i < 3; i++) replies.push((await client.until("\r\n.\r\n")).toString("latin1"));
      expect(replies[0]).toMatch(/^\+OK \d+ octets\r\nFrom: bob@example\.test\r\n/);
      expect(replies[1]).toContain("\r\n..leading dot\r\n...two dots\r\n..\r\nlast line\r\n.\r\n");
      expect(replies[2]).toMatch(/line 3\r\n\.\r\n$/);
      expect(writes.calls()).toEqual([replies.join("")]);
    }));

  it("does not hold replies without bound for a client that pipelines without end", () =>
    withWrites(async (client, writes) => {
      client.write("NOOP\r\n".repeat(5000));
      for (let i = 0; i < 5000; i++) expect(await client.line()).toBe("+OK");
      // 5000 replies of 5 octets, at most 16 KiB held: several writes, none much larger than the limit.
      expect(writes.calls().length).toBeGreaterThan(1);
      for (const call of writes.calls()) expect(call.length).toBeLessThanOrEqual(16 * 1024 + 16);
    }));

  it("answers everything a client sent before shutting down its side: a pipelined QUIT deletes", async () => {
    // A script sends its whole session and half-closes (`nc -N`); Dovecot answers every command.
    running = await startServer();
    const client = await LineClient.connect(running.port);
    expect(await client.line()).toMatch(/^\+OK /);
    client.write(`USER ${ALICE.login}\r\nPASS ${ALICE.password}\r\nDELE 2\r\nQUIT\r\n`);
    client.socket.end();
    expect(await client.line()).toMatch(/^\+OK/);
    expect(await client.line()).toMatch(/^\+OK/);
    expect(await client.line()).toBe("+OK message 2 deleted");
    expect(await client.line()).toMatch(/signing off/);
    expect(await client.line()).toBeNull();
    expect((await running.store.mailbox(ALICE.login).list()).map((m) => m.uid)).toEqual(["m1", "m3"]);
  });

  it("deletes nothing when the client shuts down its side without QUIT, and frees the mailbox", async () => {
    running = await startServer();
    const client = await loginClient(running.port);
    client.write("DELE 1\r\nSTAT\r\n");
    client.socket.end();
    expect(await client.line()).toBe("+OK message 1 deleted");
    expect(await client.line()).toMatch(/^\+OK 2 /);
    expect(await client.line()).toBeNull();
    expect((await running.store.mailbox(ALICE.login).list()).map((m) => m.uid)).toEqual(["m1", "m2", "m3"]);
    // The lease is given back: the next session gets the mailbox at once.
    const next = await loginClient(running.port);
    next.write("STAT\r\n");
    expect(await next.line()).toMatch(/^\+OK 3 /);
    next.destroy();
  });

  it("sends held replies before the goodbye, and deletes only on QUIT", async () => {
    running = await startServer();
    const client = await loginClient(running.port);
    client.write("DELE 1\r\nDELE 3\r\nSTAT\r\nQUIT\r\n");
    expect(await client.line()).toBe("+OK message 1 deleted");
    expect(await client.line()).toBe("+OK message 3 deleted");
    expect(await client.line()).toMatch(/^\+OK 1 /);
    expect(await client.line()).toMatch(/signing off/);
    expect(await client.line()).toBeNull();
    expect((await running.store.mailbox(ALICE.login).list()).map((m) => m.uid)).toEqual(["m2"]);
  });
});
