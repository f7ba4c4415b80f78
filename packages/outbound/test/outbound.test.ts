import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { fromBytes, readAll, StoreError, type Logger, type Queue, type Store } from "@mailroom/store";
import { createSmtpServer } from "@mailroom/smtp-protocol";
import { TlsContext } from "@mailroom/transport";
import { createOutbound, enqueueRelay, retryAll, type Outbound, type OutboundOptions } from "../src/index.js";
import { SmtpSession } from "../src/client.js";
import { relayToQueue } from "../src/relay.js";
import { makeStore, mailboxTexts, overriding, parseDsn, selfSignedCert, sleep, startDns, startScripted, waitFor, type Zone } from "./helpers.js";

const zones: Record<string, Zone> = {
  "far.test": { mx: [[10, "mx1.far.test"]] },
  "mx1.far.test": { a: ["127.0.0.2"] },
  // Preference 5 refuses connections, 10 takes the mail, 20 must not be needed.
  "pref.test": { mx: [[20, "mx-c.pref.test"], [5, "mx-a.pref.test"], [10, "mx-b.pref.test"]] },
  "mx-a.pref.test": { a: ["127.0.0.3"] },
  "mx-b.pref.test": { a: ["127.0.0.4"] },
  "mx-c.pref.test": { a: ["127.0.0.5"] },
  "bare.test": { a: ["127.0.0.6"] },
  "nullmx.test": { mx: [[0, ""]] },
  "broken.test": { rcode: "SERVFAIL" },
  "script.test": { mx: [[10, "mx.script.test"]] },
  "mx.script.test": { a: ["127.0.0.7"] },
  // One MX host with seven addresses, for the per-attempt address limit.
  "many.test": { mx: [[10, "mx.many.test"]] },
  "mx.many.test": { a: ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15", "127.0.0.16"] },
};

let dns: Awaited<ReturnType<typeof startDns>>;
const cleanups: (() => Promise<void> | void)[] = [];
const workers: Outbound[] = [];

beforeAll(async () => {
  dns = await startDns(zones);
});
afterAll(async () => {
  await dns.close();
});
afterEach(async () => {
  for (const worker of workers.splice(0)) await worker.stop({ deadlineMs: 0 });
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The sending side: a server for ours.test with alice, and its queue. */
async function ours(): Promise<Store & { readonly queue: Queue }> {
  return makeStore("ours.test", ["alice"]);
}

function worker(store: Store, options: Partial<OutboundOptions> & { mxPort: number }): Outbound {
  const outbound = createOutbound({
    store,
    hostname: "mail.ours.test",
    resolver: { servers: [dns.server], timeoutMs: 2_000 },
    connectTimeoutMs: 3_000,
    // Quick retries, but a lifetime (the sum) that no slow attempt in a test runs out of.
    retrySchedule: [50, 50, 60_000],
    ...options,
  });
  workers.push(outbound);
  return outbound;
}

/** A real Mailroom MX (smtp-protocol) for far.test with bob and carol, on `host`. */
async function farMx(host: string, port = 0) {
  const store = await makeStore("far.test", ["bob", "carol"]);
  const server = createSmtpServer({ store, hostname: "mx1.far.test" });
  const listener = await server.listen({ host, port, mode: "mx" });
  cleanups.push(async () => {
    await listener.close();
    await server.close({ deadlineMs: 100 });
  });
  return { store, port: listener.port };
}

async function scripted(host: string, port: number, script?: Parameters<typeof startScripted>[2]) {
  const server = await startScripted(host, port, script);
  cleanups.push(() => server.close());
  return server;
}

const MESSAGE = [
  "From: Alice <alice@ours.test>",
  "To: Bob <bob@far.test>",
  "Subject: hello",
  "Message-ID: <m1@ours.test>",
  "",
  "First line.",
  ".",
  "..two dots",
  ".leading dot",
  "",
  "Last line.",
  "",
].join("\r\n");

async function enqueue(store: Store & { readonly queue: Queue }, sender: string, recipients: string[], text = MESSAGE) {
  return enqueueRelay(store.queue, { sender, recipients }, fromBytes(text));
}

async function dsnsOf(store: Store, address = "alice@ours.test") {
  return (await mailboxTexts(store, address)).map((text) => {
    expect(text.startsWith("Return-Path: <>\r\n")).toBe(true);
    return parseDsn(text.slice("Return-Path: <>\r\n".length));
  });
}

describe("delivery over MX", () => {
  it("delivers the exact bytes, dot lines intact, and removes the item", async () => {
    const mx = await farMx("127.0.0.2");
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["bob@far.test"]);
    expect(await worker(store, { mxPort: mx.port }).runOnce()).toBe(1);
    const [copy] = await mailboxTexts(mx.store, "bob@far.test");
    expect(copy).toBeDefined();
    expect(copy!.startsWith("Return-Path: <alice@ours.test>\r\nReceived: from mail.ours.test")).toBe(true);
    expect(copy!.endsWith(`\r\n${MESSAGE}`)).toBe(true);
    expect(await store.queue.list()).toEqual([]);
  });

  it("streams a large message with backpressure, byte for byte", async () => {
    const mx = await farMx("127.0.0.2");
    const store = await ours();
    const lines = Array.from({ length: 60_000 }, (_, i) => (i % 7 === 0 ? `.line ${i} ${"x".repeat(40)}` : `line ${i} ${"y".repeat(50)}`));
    const big = `Subject: big\r\n\r\n${lines.join("\r\n")}\r\n`;
    await enqueue(store, "alice@ours.test", ["bob@far.test"], big);
    await worker(store, { mxPort: mx.port }).runOnce();
    const [copy] = await mailboxTexts(mx.store, "bob@far.test");
    expect(copy!.length).toBeGreaterThan(3_000_000);
    expect(copy!.endsWith(`\r\n${big}`)).toBe(true);
  });

  it("tries MX hosts by preference and falls back when the first refuses the connection", async () => {
    const b = await scripted("127.0.0.4", 0);
    const c = await scripted("127.0.0.5", b.port);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["someone@pref.test"]);
    await worker(store, { mxPort: b.port }).runOnce();
    expect(b.received.map((m) => m.to)).toEqual([["someone@pref.test"]]);
    expect(c.connections).toBe(0);
    expect(await store.queue.list()).toEqual([]);
  });

  it("delivers in plaintext on a new connection when the MX's STARTTLS handshake fails, as opportunistic TLS does", async () => {
    const server = await scripted("127.0.0.7", 0, { brokenStartTls: true });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.connections).toBe(2);
    expect(server.received).toHaveLength(1);
    expect(server.received[0]!.to).toEqual(["x@script.test"]);
    expect(await store.queue.list()).toEqual([]);
  });

  it("waits for a slow greeting longer than for the connection (RFC 5321 4.5.3.2: minutes, not the connect timeout)", async () => {
    const server = await scripted("127.0.0.7", 0, { greetingDelayMs: 600 });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    await worker(store, { mxPort: server.port, connectTimeoutMs: 200, replyTimeoutMs: 5_000 }).runOnce();
    expect(server.received).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
  });

  it("uses the domain's own address when it has no MX", async () => {
    const server = await scripted("127.0.0.6", 0);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@bare.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toHaveLength(1);
    expect(server.received[0]!.body).toBe(MESSAGE);
  });

  it("sends SIZE and BODY=8BITMIME when the server offers them and the message is 8-bit", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"], "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n");
    await worker(store, { mxPort: server.port }).runOnce();
    const size = (await store.queue.list()).length;
    expect(size).toBe(0);
    expect(server.received[0]!.mailLine).toMatch(/^MAIL FROM:<alice@ours\.test> SIZE=\d+ BODY=8BITMIME$/);
  });
});

describe("connections", () => {
  it("falls back to HELO and sends without extensions", async () => {
    const server = await scripted("127.0.0.7", 0, { noEhlo: true });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"], "Subject: caf\u00e9\r\n\r\nhi\r\n");
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.helo).toEqual(["HELO mail.ours.test"]);
    expect(server.received[0]!.mailLine).toBe("MAIL FROM:<alice@ours.test>");
    expect(await store.queue.list()).toEqual([]);
  });

  it("reuses one connection for several items to the same host, and checks it first", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    for (let i = 0; i < 3; i++) await enqueue(store, "alice@ours.test", [`r${i}@script.test`]);
    const outbound = worker(store, { mxPort: server.port, concurrency: 1 });
    expect(await outbound.runOnce()).toBe(3);
    expect(server.received).toHaveLength(3);
    expect(server.connections).toBe(1);
    // The idle connection dies (the server restarts): the next item opens a new one.
    await server.close();
    const again = await scripted("127.0.0.7", server.port);
    await enqueue(store, "alice@ours.test", ["r3@script.test"]);
    expect(await outbound.runOnce()).toBe(1);
    expect(again.received.map((m) => m.to)).toEqual([["r3@script.test"]]);
    expect(await store.queue.list()).toEqual([]);
  });
});

describe("failures and retries", () => {
  it("reschedules on 4xx and delivers on the next attempt", async () => {
    let tries = 0;
    const server = await scripted("127.0.0.7", 0, { rcpt: () => (tries++ === 0 ? "451 4.3.0 try again later" : "250 2.1.5 ok") });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [150] });
    await outbound.runOnce();
    const waiting = await store.queue.get(item.id);
    expect(waiting?.attempts).toBe(1);
    expect(waiting?.recipients[0]?.status).toBe("pending");
    expect(waiting?.lastError).toContain("451 4.3.0 try again later");
    expect(await outbound.runOnce()).toBe(0); // not due yet
    await sleep(200);
    expect(await outbound.runOnce()).toBe(1);
    expect(server.received).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
  });

  it("bounces a 5xx with one multipart/report in the sender's local mailbox", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 no such user here" });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["nobody@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    const dsns = await dsnsOf(store);
    expect(dsns).toHaveLength(1);
    const dsn = dsns[0]!;
    expect(dsn.headers).toContain("From: Mail Delivery System <MAILER-DAEMON@mail.ours.test>");
    expect(dsn.headers).toContain("To: <alice@ours.test>");
    expect(dsn.contentType).toMatch(/^multipart\/report; report-type=delivery-status; boundary=/);
    expect(dsn.parts.map((p) => p.contentType)).toEqual(["text/plain", "message/delivery-status", "text/rfc822-headers"]);
    expect(dsn.perMessage["reporting-mta"]).toBe("dns; mail.ours.test");
    expect(dsn.perMessage["arrival-date"]).toMatch(/^\w{3}, \d+ \w{3} \d{4} /);
    expect(dsn.recipients).toEqual([
      {
        "final-recipient": "rfc822; nobody@script.test",
        action: "failed",
        status: "5.1.1",
        "diagnostic-code": expect.stringMatching(/^smtp; 550 5\.1\.1 no such user here/),
      },
    ]);
    expect(dsn.parts[2]!.body).toContain("Subject: hello");
    expect(dsn.parts[2]!.body).not.toContain("First line.");
    expect(await store.queue.list()).toEqual([]);
  });

  it("bounces a refused MAIL as refused, also when the server hangs up right after its refusal", async () => {
    const server = await scripted("127.0.0.7", 0, { mail: () => ({ reply: "554 5.7.1 you are on a blocklist", hangUp: true }) });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    const [dsn] = await dsnsOf(store);
    expect(dsn?.recipients).toEqual([
      expect.objectContaining({ action: "failed", status: "5.7.1", "diagnostic-code": expect.stringMatching(/^smtp; 554 5\.7\.1 you are on a blocklist/) }),
    ]);
    expect(await store.queue.list()).toEqual([]);
  });

  it("names only the failed recipients when others were delivered", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: (a) => (a.startsWith("nobody") ? "550 5.1.1 unknown" : "250 2.1.5 ok") });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["bob@script.test", "nobody@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received.map((m) => m.to)).toEqual([["bob@script.test"]]);
    const dsns = await dsnsOf(store);
    expect(dsns).toHaveLength(1);
    expect(dsns[0]!.recipients.map((r) => r["final-recipient"])).toEqual(["rfc822; nobody@script.test"]);
    expect(dsns[0]!.parts[0]!.body).not.toContain("bob@script.test");
  });

  it("bounces a recipient that failed for good at the end of that attempt, and only once, while another is retried", async () => {
    let tries = 0;
    const server = await scripted("127.0.0.7", 0, {
      rcpt: (a) => (a.startsWith("nobody") ? "550 5.1.1 unknown" : tries++ === 0 ? "451 4.7.1 greylisted" : "250 2.1.5 ok"),
    });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["nobody@script.test", "x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [100] });
    await outbound.runOnce();
    // The item waits for x, but alice hears about nobody now.
    expect((await store.queue.get(item.id))?.recipients.map((r) => [r.address, r.status])).toEqual([
      ["nobody@script.test", "failed"],
      ["x@script.test", "pending"],
    ]);
    const first = await dsnsOf(store);
    expect(first.map((d) => d.recipients.map((r) => r["final-recipient"]))).toEqual([["rfc822; nobody@script.test"]]);
    await sleep(150);
    expect(await outbound.runOnce()).toBe(1);
    expect(server.received).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
    // Done: no second bounce naming nobody again.
    expect(await dsnsOf(store)).toHaveLength(1);
  });

  it("never bounces a bounce (null sender)", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 unknown" });
    const store = await ours();
    await enqueue(store, "", ["nobody@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toEqual([]);
    expect(await store.queue.list()).toEqual([]);
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
  });

  it("queues the bounce, with the null sender, for a sender on another domain", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 unknown" });
    const store = await ours();
    await enqueue(store, "someone@far.test", ["nobody@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    const items = await store.queue.list();
    expect(items).toHaveLength(1);
    expect(items[0]).toMatchObject({ sender: "", recipients: [{ address: "someone@far.test", status: "pending" }] });
    const text = new TextDecoder().decode(await readAll(await store.queue.readMessage(items[0]!.id)));
    expect(parseDsn(text).recipients[0]).toMatchObject({ "final-recipient": "rfc822; nobody@script.test", status: "5.1.1" });
  });

  it("keeps the item as dead when even the bounce cannot be stored", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 unknown" });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["nobody@script.test"]);
    const failing = overriding(store, { deliver: () => Promise.reject(new StoreError("permanent", "disk on fire")) });
    await worker(failing, { mxPort: server.port }).runOnce();
    const dead = await store.queue.get(item.id);
    expect(dead).toMatchObject({ state: "dead", recipients: [{ address: "nobody@script.test", status: "failed" }] });
    expect(dead?.lastError).toContain("disk on fire");
  });

  it("hands queued mail and bounces to the store as already accepted, so a soft limit of the store does not refuse them", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 unknown" });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["nobody@script.test"]);
    await enqueue(store, "someone@far.test", ["alice@ours.test", "nobody@script.test"]);
    // A store whose free-space reserve is reached: new mail is refused, mail already accepted is not.
    const refused = () => Promise.reject(new StoreError("no-space", "reserve reached"));
    const reserved = overriding(store, {
      deliver: (mailboxes: readonly string[], source: AsyncIterable<Uint8Array>, options?: { accepted?: boolean }) =>
        options?.accepted === true ? store.deliver(mailboxes, source, options) : refused(),
      queue: overriding(store.queue, {
        enqueue: (envelope: Parameters<Queue["enqueue"]>[0], source: AsyncIterable<Uint8Array>, options?: { accepted?: boolean }) =>
          options?.accepted === true ? store.queue.enqueue(envelope, source, options) : refused(),
      }),
    });
    await worker(reserved, { mxPort: server.port }).runOnce();
    // Alice got the second item's copy and the bounce of the first; far.test's sender gets its bounce
    // through the queue.
    const texts = await mailboxTexts(store, "alice@ours.test");
    expect(texts).toHaveLength(2);
    expect(texts.filter((text) => text.startsWith("Return-Path: <>\r\n"))).toHaveLength(1);
    const items = await store.queue.list();
    expect(items).toHaveLength(1);
    expect(items[0]).toMatchObject({ sender: "", recipients: [{ address: "someone@far.test", status: "pending" }] });
  });

  it("keeps the item queued when the bounce cannot be stored for now, and bounces once the store takes it", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 unknown" });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["nobody@script.test"]);
    let full = true;
    const flaky = overriding(store, {
      deliver: (...args: Parameters<typeof store.deliver>) =>
        full ? Promise.reject(new StoreError("no-space", "disk full for now")) : store.deliver(...args),
    });
    const outbound = worker(flaky, { mxPort: server.port, retrySchedule: [0, 0, 60_000] });
    await outbound.runOnce();
    const waiting = await store.queue.get(item.id);
    expect(waiting).toMatchObject({ state: "queued", recipients: [{ address: "nobody@script.test", status: "failed" }] });
    expect(waiting?.lastError).toContain("disk full for now");
    expect(await dsnsOf(store)).toEqual([]);
    full = false;
    await outbound.runOnce();
    expect(await store.queue.list()).toEqual([]);
    const dsns = await dsnsOf(store);
    expect(dsns).toHaveLength(1);
    expect(dsns[0]!.recipients[0]).toMatchObject({ "final-recipient": "rfc822; nobody@script.test", status: "5.1.1" });
  });

  it("fails the remaining recipients with a DSN once the message has been queued for queueLifetimeMs", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "451 4.3.0 busy" });
    const store = await ours();
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [30, 30], queueLifetimeMs: 60 });
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    for (let i = 0; i < 20 && (await store.queue.list()).length > 0; i++) {
      await outbound.runOnce();
      await sleep(20);
    }
    expect(await store.queue.list()).toEqual([]);
    const dsns = await dsnsOf(store);
    expect(dsns).toHaveLength(1);
    expect(dsns[0]!.recipients[0]).toMatchObject({ action: "failed", status: "4.3.0" });
    expect(dsns[0]!.recipients[0]!["diagnostic-code"]).toMatch(/gave up after \d+s in the queue and \d+ attempts; last error: 451 4\.3\.0 busy/);
  });

  it("does not let attempts an operator forces use up the queue lifetime", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "451 4.3.0 busy" });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [60_000, 60_000] });
    // More flushes (`mailroom queue retry --all` and `queue run`) than the schedule has steps.
    for (let i = 0; i < 4; i++) {
      expect(await retryAll(store.queue)).toMatchObject({ retried: 1 });
      expect(await outbound.runOnce()).toBe(1);
    }
    const waiting = await store.queue.get(item.id);
    expect(waiting).toMatchObject({ state: "queued", attempts: 4, recipients: [{ address: "x@script.test", status: "pending" }] });
    // The next attempt is still within the two minutes the schedule gives the message.
    expect(waiting!.nextAttemptAt).toBeLessThanOrEqual(item.createdAt + 120_000);
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
  });

  it("sends the recipients refused as too many (452) in a new transaction at once, on the same connection", async () => {
    let inTransaction = 0;
    const server = await scripted("127.0.0.7", 0, {
      mail: () => {
        inTransaction = 0;
        return { reply: "250 2.1.0 ok" };
      },
      rcpt: () => (++inTransaction > 2 ? "452 4.5.3 too many recipients" : "250 2.1.5 ok"),
    });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["a@script.test", "b@script.test", "c@script.test", "d@script.test", "e@script.test"]);
    expect(await worker(store, { mxPort: server.port }).runOnce()).toBe(1);
    expect(server.received.map((m) => m.to)).toEqual([["a@script.test", "b@script.test"], ["c@script.test", "d@script.test"], ["e@script.test"]]);
    expect(server.connections).toBe(1);
    expect(await store.queue.list()).toEqual([]);
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
  });

  it("sends no follow-up transaction on a connection whose replies came out of turn", async () => {
    const server = await scripted("127.0.0.7", 0, {
      rcpt: (a) => (a.startsWith("odd") ? "252 2.1.5 cannot verify" : a.startsWith("many") ? "452 4.5.3 too many recipients" : "250 2.1.5 ok"),
    });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["a@script.test", "odd@script.test", "many@script.test"]);
    expect(await worker(store, { mxPort: server.port }).runOnce()).toBe(1);
    // One transaction only (the script counts the 252 as taken; we do not).
    expect(server.received).toHaveLength(1);
    expect(await store.queue.get(item.id)).toMatchObject({
      recipients: [
        { address: "a@script.test", status: "delivered" },
        { address: "odd@script.test", status: "pending" },
        { address: "many@script.test", status: "pending" },
      ],
    });
  });

  it("leaves a recipient that gets 452 in a transaction of its own pending, without looping", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: (a) => (a.startsWith("full") ? "452 4.2.2 mailbox full" : "250 2.1.5 ok") });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["ok@script.test", "full@script.test"]);
    expect(await worker(store, { mxPort: server.port }).runOnce()).toBe(1);
    expect(server.received.map((m) => m.to)).toEqual([["ok@script.test"]]);
    expect(await store.queue.get(item.id)).toMatchObject({
      recipients: [
        { address: "ok@script.test", status: "delivered" },
        { address: "full@script.test", status: "pending" },
      ],
    });
  });

  it("keeps retrying on the last step of the schedule until queueLifetimeMs, then bounces", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "451 4.3.0 busy" });
    const store = await ours();
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [20], queueLifetimeMs: 1_500 });
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    // Far more attempts than the schedule has steps, and the message is still queued.
    for (let i = 0; i < 4; i++) {
      await sleep(25);
      await outbound.runOnce();
    }
    expect(await store.queue.get(item.id)).toMatchObject({ state: "queued", recipients: [{ status: "pending" }] });
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
    for (let i = 0; i < 120 && (await store.queue.list()).length > 0; i++) {
      await sleep(25);
      await outbound.runOnce();
    }
    expect(await store.queue.list()).toEqual([]);
    const [dsn] = await dsnsOf(store);
    expect(dsn!.recipients[0]).toMatchObject({ "final-recipient": "rfc822; x@script.test", status: "4.3.0" });
  });

  it("takes an expiry bounce's status from the start of the last reply, not from digits inside its text", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: (a) => (a.startsWith("ip") ? "451 try later (mx[10.4.5.6]:25)" : "450 4.2.0 mailbox busy") });
    const store = await ours();
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [30], queueLifetimeMs: 30 });
    await enqueue(store, "alice@ours.test", ["ip@script.test", "busy@script.test"]);
    for (let i = 0; i < 20 && (await store.queue.list()).length > 0; i++) {
      await outbound.runOnce();
      await sleep(20);
    }
    const [dsn] = await dsnsOf(store);
    expect(dsn!.recipients.map((r) => [r["final-recipient"], r.status])).toEqual([
      ["rfc822; ip@script.test", "4.4.7"],
      ["rfc822; busy@script.test", "4.2.0"],
    ]);
  });

  it("bounces a null MX with 5.1.10", async () => {
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@nullmx.test"]);
    await worker(store, { mxPort: 9 }).runOnce();
    const dsns = await dsnsOf(store);
    expect(dsns[0]!.recipients[0]).toMatchObject({ "final-recipient": "rfc822; x@nullmx.test", status: "5.1.10" });
    expect(dsns[0]!.recipients[0]!["diagnostic-code"]).toContain("does not accept mail");
  });

  it("bounces a domain that does not exist (NXDOMAIN)", async () => {
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@nowhere.test"]);
    await worker(store, { mxPort: 9 }).runOnce();
    const dsns = await dsnsOf(store);
    expect(dsns.map((d) => d.recipients[0]?.status)).toEqual(["5.1.2"]);
    expect(await store.queue.list()).toEqual([]);
  });

  // Deno's node:dns reports SERVFAIL as ENOTFOUND, the same as NXDOMAIN (see README).
  it.skipIf("Deno" in globalThis)("retries when the DNS server fails (SERVFAIL)", async () => {
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@broken.test"]);
    await worker(store, { mxPort: 9 }).runOnce();
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
    const left = await store.queue.list();
    expect(left.map((i) => i.id)).toEqual([item.id]);
    expect(left[0]!.lastError).toContain("4.4.3");
  });

  it("fails a message that needs SMTPUTF8 with 5.6.7 when the server lacks it", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    await enqueueRelay(store.queue, { sender: "alice@ours.test", recipients: ["j\u00fcrgen@script.test"], utf8: true }, fromBytes(MESSAGE));
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toEqual([]);
    expect((await dsnsOf(store))[0]!.recipients[0]!.status).toBe("5.6.7");
  });

  it("sends a message that asked for SMTPUTF8 but is all ASCII to a server without it, as it is", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    await enqueueRelay(store.queue, { sender: "alice@ours.test", recipients: ["x@script.test"], utf8: true }, fromBytes(MESSAGE));
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toHaveLength(1);
    expect(server.received[0]!.mailLine).not.toContain("SMTPUTF8");
    expect(await store.queue.list()).toEqual([]);
  });

  it("still refuses an all-ASCII envelope whose headers carry UTF-8 to a server without SMTPUTF8", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    const text = MESSAGE.replace("Subject: hello", "Subject: gr\u00fc\u00dfe");
    await enqueueRelay(store.queue, { sender: "alice@ours.test", recipients: ["x@script.test"], utf8: true }, fromBytes(text));
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toEqual([]);
    expect((await dsnsOf(store))[0]!.recipients[0]!.status).toBe("5.6.7");
  });
});

describe("bounces of SMTPUTF8 mail (RFC 6533)", () => {
  const UTF8_MESSAGE = "From: J\u00f6rg <j\u00f6rg@script.test>\r\nTo: <j\u00fcrgen@script.test>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n";
  const partTypes = (dsn: ReturnType<typeof parseDsn>): string[] => dsn.parts.map((p) => p.contentType);

  it("queues the bounce to a UTF-8 sender as SMTPUTF8 and relays it with SMTPUTF8, in the global types", async () => {
    const server = await scripted("127.0.0.7", 0, {
      ehlo: ["8BITMIME", "SMTPUTF8"],
      rcpt: (a) => (a.startsWith("j\u00fcrgen") ? "550 5.1.1 no such user" : "250 2.1.5 ok"),
    });
    const store = await ours();
    await enqueueRelay(store.queue, { sender: "j\u00f6rg@script.test", recipients: ["j\u00fcrgen@script.test"], utf8: true }, fromBytes(UTF8_MESSAGE));
    const outbound = worker(store, { mxPort: server.port });
    await outbound.runOnce();
    expect(server.received).toEqual([]);
    const [bounce] = await store.queue.list();
    expect(bounce).toMatchObject({ sender: "", recipients: [{ address: "j\u00f6rg@script.test", status: "pending" }], meta: { smtputf8: "1" } });

    await outbound.runOnce();
    expect(server.received).toHaveLength(1);
    const sent = server.received[0]!;
    expect(sent.from).toBe("");
    expect(sent.to).toEqual(["j\u00f6rg@script.test"]);
    expect(sent.mailLine).toMatch(/^MAIL FROM:<> .*\bSMTPUTF8\b/);
    const dsn = parseDsn(sent.body);
    expect(dsn.headers).toContain("To: <j\u00f6rg@script.test>");
    expect(dsn.contentType).toMatch(/^multipart\/report; report-type=global-delivery-status; boundary=/);
    expect(partTypes(dsn)).toEqual(["text/plain", "message/global-delivery-status", "message/global-headers"]);
    expect(dsn.recipients).toEqual([
      {
        "final-recipient": "utf-8; j\u00fcrgen@script.test",
        action: "failed",
        status: "5.1.1",
        "diagnostic-code": expect.stringMatching(/^smtp; 550 5\.1\.1 no such user/),
      },
    ]);
    expect(dsn.parts[2]!.body).toBe("From: J\u00f6rg <j\u00f6rg@script.test>\r\nTo: <j\u00fcrgen@script.test>\r\nSubject: Gr\u00fc\u00dfe\r\n");
    expect(await store.queue.list()).toEqual([]);
  });

  it("does not hand that bounce to a server without SMTPUTF8 (no bounce for the bounce)", async () => {
    const plain = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 no such user" });
    const store = await ours();
    await enqueueRelay(store.queue, { sender: "j\u00f6rg@script.test", recipients: ["nobody@script.test"], utf8: true }, fromBytes(UTF8_MESSAGE));
    const outbound = worker(store, { mxPort: plain.port });
    await outbound.runOnce();
    const [bounce] = await store.queue.list();
    expect(bounce?.meta).toMatchObject({ smtputf8: "1" });
    await outbound.runOnce();
    expect(plain.received).toEqual([]);
    expect(await store.queue.list()).toEqual([]);
  });

  it("delivers the global report straight into a local sender's mailbox, UTF-8 address and headers intact", async () => {
    const server = await scripted("127.0.0.7", 0, { ehlo: ["8BITMIME", "SMTPUTF8"], rcpt: () => "550 5.1.1 no such user" });
    const store = await makeStore("ours.test", ["alice", "j\u00f6rg"]);
    const text = "From: <j\u00f6rg@ours.test>\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHallo\r\n";
    await enqueueRelay(store.queue, { sender: "j\u00f6rg@ours.test", recipients: ["j\u00fcrgen@script.test", "x@script.test"], utf8: true }, fromBytes(text));
    await worker(store, { mxPort: server.port }).runOnce();
    const [dsn, more] = await dsnsOf(store, "j\u00f6rg@ours.test");
    expect(more).toBeUndefined();
    expect(dsn!.headers).toContain("To: <j\u00f6rg@ours.test>");
    expect(partTypes(dsn!)).toEqual(["text/plain", "message/global-delivery-status", "message/global-headers"]);
    expect(dsn!.recipients.map((r) => [r["final-recipient"], r.status])).toEqual([
      ["utf-8; j\u00fcrgen@script.test", "5.1.1"],
      ["rfc822; x@script.test", "5.1.1"],
    ]);
    expect(dsn!.parts[2]!.body).toBe("From: <j\u00f6rg@ours.test>\r\nSubject: Gr\u00fc\u00dfe\r\n");
    // Delivered, not queued.
    expect(await store.queue.list()).toEqual([]);
  });

  it("keeps the RFC 3464 report for mail that did not come with SMTPUTF8, locally and through the queue", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "550 5.1.1 no such user" });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["nobody@script.test"]);
    await enqueue(store, "someone@far.test", ["nobody@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    const [local] = await dsnsOf(store);
    expect(partTypes(local!)).toEqual(["text/plain", "message/delivery-status", "text/rfc822-headers"]);
    expect(local!.headers).not.toContain("Content-Transfer-Encoding");
    const [queued] = await store.queue.list();
    expect(queued).toMatchObject({ sender: "", recipients: [{ address: "someone@far.test" }], meta: {} });
    const dsn = parseDsn(new TextDecoder().decode(await readAll(await store.queue.readMessage(queued!.id))));
    expect(partTypes(dsn)).toEqual(["text/plain", "message/delivery-status", "text/rfc822-headers"]);
    expect(dsn.recipients[0]!["final-recipient"]).toBe("rfc822; nobody@script.test");
  });
});

describe("replies that do not mean delivered", () => {
  it.each([
    ["252 to RCPT", { rcpt: () => "252 2.1.5 cannot verify, will try" }, "4.5.0 unexpected reply to RCPT: 252 2.1.5 cannot verify"],
    ["354 to RCPT", { rcpt: () => "354 go ahead" }, "4.5.0 unexpected reply to RCPT: 354 go ahead"],
    ["199 to RCPT", { rcpt: () => "199 hmm" }, "4.5.0 unexpected reply to RCPT: 199 hmm"],
    ["250 to DATA", { dataCommand: () => "250 2.0.0 fine" }, "4.5.0 unexpected reply to DATA: 250 2.0.0 fine"],
    ["354 after the data", { data: () => "354 more please" }, "4.5.0 unexpected reply to end of data: 354 more please"],
  ] satisfies [string, Parameters<typeof startScripted>[2], string][])("keeps the recipient queued, without a bounce, on %s", async (_, script, error) => {
    const server = await scripted("127.0.0.7", 0, script);
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toEqual([]);
    const left = await store.queue.get(item.id);
    expect(left?.recipients).toEqual([expect.objectContaining({ address: "x@script.test", status: "pending" })]);
    expect(left?.lastError).toContain(error);
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
  });

  it("retries a recipient refused with 552 at RCPT (too many recipients, RFC 5321 4.5.3.1.10) instead of bouncing it", async () => {
    let tries = 0;
    const server = await scripted("127.0.0.7", 0, { rcpt: () => (tries++ === 0 ? "552 5.5.3 too many recipients" : "250 2.1.5 ok") });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, retrySchedule: [50, 60_000] });
    await outbound.runOnce();
    const left = await store.queue.get(item.id);
    expect(left?.recipients[0]?.status).toBe("pending");
    expect(left?.lastError).toContain("552 5.5.3 too many recipients");
    expect(await mailboxTexts(store, "alice@ours.test")).toEqual([]);
    await sleep(80);
    await outbound.runOnce();
    expect(server.received.map((m) => m.to)).toEqual([["x@script.test"]]);
    expect(await store.queue.list()).toEqual([]);
  });
});

describe("misbehaving servers", () => {
  it("hangs up on a reply that never ends and retries later, without running out of memory", async () => {
    const server = await scripted("127.0.0.7", 0, { endlessEhlo: {} });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const started = Date.now();
    await worker(store, { mxPort: server.port, replyTimeoutMs: 30_000 }).runOnce();
    expect(Date.now() - started).toBeLessThan(5_000);
    const left = await store.queue.get(item.id);
    expect(left?.recipients[0]?.status).toBe("pending");
    expect(left?.lastError).toMatch(/4\.4\.1 .*(longer than|more than) 100 lines or 65536 octets/);
  });

  it("times out a reply as a whole, however slowly its lines keep coming", async () => {
    const server = await scripted("127.0.0.7", 0, { endlessEhlo: { everyMs: 100 } });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const started = Date.now();
    await worker(store, { mxPort: server.port, replyTimeoutMs: 600 }).runOnce();
    expect(Date.now() - started).toBeLessThan(3_000);
    const left = await store.queue.get(item.id);
    expect(left?.recipients[0]?.status).toBe("pending");
    expect(left?.lastError).toContain("no complete reply within 600 ms");
  });

  it("tries at most mxAddressLimit addresses per attempt (default 5)", async () => {
    const first = await scripted("127.0.0.10", 0, { greeting: "421 4.3.2 not now" });
    const servers = [first];
    for (const last of [11, 12, 13, 14, 15, 16]) servers.push(await scripted(`127.0.0.${last}`, first.port, { greeting: "421 4.3.2 not now" }));
    const connections = (): number => servers.reduce((sum, s) => sum + s.connections, 0);
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@many.test"]);
    await worker(store, { mxPort: first.port }).runOnce();
    expect(connections()).toBe(5);
    const left = await store.queue.get(item.id);
    expect(left?.recipients[0]?.status).toBe("pending");
    expect(left?.lastError).toContain("421 4.3.2 not now");
    await retryAll(store.queue);
    await worker(store, { mxPort: first.port, mxAddressLimit: 2 }).runOnce();
    expect(connections()).toBe(7);
  });

  it("sends UTF-8 addresses as UTF-8 to a server that offers SMTPUTF8", async () => {
    const server = await scripted("127.0.0.7", 0, { ehlo: ["8BITMIME", "SMTPUTF8"] });
    const store = await ours();
    await enqueueRelay(store.queue, { sender: "alice@ours.test", recipients: ["j\u00fcrgen.\u4f8b\u5b50@script.test"], utf8: true }, fromBytes(MESSAGE));
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received.map((m) => m.to)).toEqual([["j\u00fcrgen.\u4f8b\u5b50@script.test"]]);
    expect(server.received[0]!.mailLine).toBe("MAIL FROM:<alice@ours.test> SMTPUTF8");
    expect(await store.queue.list()).toEqual([]);
  });

  it("asks for SMTPUTF8 for a non-ASCII address even when the queued item does not say so", async () => {
    const plain = await scripted("127.0.0.7", 0);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["j\u00fcrgen@script.test"]);
    await worker(store, { mxPort: plain.port }).runOnce();
    expect(plain.received).toEqual([]);
    expect((await dsnsOf(store))[0]!.recipients[0]!.status).toBe("5.6.7");
  });

  it("stop() keeps its deadline when an idle connection's server does not answer QUIT", async () => {
    const server = await scripted("127.0.0.7", 0, { silentQuit: true });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, replyTimeoutMs: 5_000, connectionIdleMs: 60_000 });
    await outbound.runOnce();
    expect(server.received).toHaveLength(1);
    const started = Date.now();
    await outbound.stop({ deadlineMs: 200 });
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});

describe("recording the outcome", () => {
  it("tries again when the store fails for a moment while the item is finished, so nobody gets the message twice", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    let failures = 0;
    const queue = Object.create(store.queue) as Queue;
    queue.finish = async (claim) => {
      if (failures++ === 0) throw new StoreError("unavailable", "connection to the database lost");
      return store.queue.finish(claim);
    };
    const flaky = Object.create(store) as typeof store;
    Object.defineProperty(flaky, "queue", { value: queue });
    const outbound = worker(flaky, { mxPort: server.port, claimTtlMs: 2_000 });
    await outbound.runOnce();
    expect(failures).toBe(2);
    expect(await store.queue.get(item.id)).toBeNull();
    await outbound.runOnce();
    expect(server.received).toHaveLength(1);
  });

  it("tries again when the store fails for a moment while the item is rescheduled", async () => {
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "451 4.7.1 greylisted" });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    let failures = 0;
    const queue = Object.create(store.queue) as Queue;
    queue.reschedule = async (claim, options) => {
      if (failures++ === 0) throw new StoreError("unavailable", "connection to the database lost");
      return store.queue.reschedule(claim, options);
    };
    const flaky = Object.create(store) as typeof store;
    Object.defineProperty(flaky, "queue", { value: queue });
    await worker(flaky, { mxPort: server.port, claimTtlMs: 2_000, retrySchedule: [60_000] }).runOnce();
    const left = await store.queue.get(item.id);
    expect(left).toMatchObject({ attempts: 1, recipients: [{ status: "pending" }] });
    expect(left?.lastError).toContain("451 4.7.1 greylisted");
    expect(await store.queue.delivering()).toEqual([]);
  });
});

/** A Mailroom submission server for `store` as a smarthost, with a self-signed certificate for localhost. */
async function smarthostServer(store: Store, implicitTls = false): Promise<{ port: number; cert: string }> {
  const tls = selfSignedCert();
  cleanups.push(() => tls.cleanup());
  const server = createSmtpServer({ store, hostname: "localhost", tls: new TlsContext({ cert: tls.cert, key: tls.key }) });
  const listener = await server.listen({ host: "127.0.0.1", port: 0, mode: "submission", ...(implicitTls ? { implicitTls: true } : {}) });
  cleanups.push(async () => {
    await listener.close();
    await server.close({ deadlineMs: 100 });
  });
  return { port: listener.port, cert: tls.cert };
}

describe("smarthost", () => {
  it("sends everything to the smarthost over STARTTLS with AUTH", async () => {
    const relayStore = await makeStore("far.test", ["bob"], "relay-pass");
    await relayStore.directory.addDomain("ours.test");
    await relayStore.directory.addAccount({ address: "alice@ours.test", passwordHash: (await relayStore.directory.getAccount("bob@far.test"))!.passwordHash });
    const smarthost = await smarthostServer(relayStore);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["bob@far.test"]);
    const outbound = worker(store, {
      mxPort: 9,
      smarthost: { host: "127.0.0.1", port: smarthost.port, tls: "starttls", auth: { username: "alice@ours.test", password: "relay-pass" }, requireTls: true },
      tlsOptions: { ca: smarthost.cert, rejectUnauthorized: true },
    });
    await outbound.runOnce();
    const [copy] = await mailboxTexts(relayStore, "bob@far.test");
    expect(copy).toMatch(/with ESMTPSA id/);
    expect(copy!.endsWith(`\r\n${MESSAGE}`)).toBe(true);
    expect(await store.queue.list()).toEqual([]);
  });

  it("with verify, sends nothing (no password either) to a smarthost whose certificate is not trusted", async () => {
    const relayStore = await makeStore("far.test", ["bob"], "relay-pass");
    const smarthost = await smarthostServer(relayStore);
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["bob@far.test"]);
    await worker(store, {
      mxPort: 9,
      smarthost: { host: "localhost", port: smarthost.port, tls: "starttls", auth: { username: "alice@ours.test", password: "relay-pass" }, verify: true },
    }).runOnce();
    expect(await mailboxTexts(relayStore, "bob@far.test")).toEqual([]);
    const waiting = await store.queue.get(item.id);
    expect(waiting?.recipients[0]?.status).toBe("pending");
    expect(waiting?.lastError).toMatch(/certificate/i);
  });

  it("uses implicit TLS when told to", async () => {
    const relayStore = await makeStore("ours.test", ["alice", "carol"], "pw");
    const smarthost = await smarthostServer(relayStore, true);
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["carol@elsewhere.test"]);
    await relayStore.directory.addDomain("elsewhere.test");
    await relayStore.directory.addAccount({ address: "carol@elsewhere.test", passwordHash: (await relayStore.directory.getAccount("carol@ours.test"))!.passwordHash });
    await worker(store, {
      mxPort: 9,
      smarthost: { host: "localhost", port: smarthost.port, tls: "implicit", auth: { username: "alice@ours.test", password: "pw" } },
      tlsOptions: { ca: smarthost.cert, rejectUnauthorized: true },
    }).runOnce();
    expect(await mailboxTexts(relayStore, "carol@elsewhere.test")).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
  });

  it("keeps the mail queued when the smarthost refuses the password", async () => {
    const relayStore = await makeStore("ours.test", ["alice"], "right");
    const smarthost = await smarthostServer(relayStore);
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["bob@far.test"]);
    await worker(store, {
      mxPort: 9,
      smarthost: { host: "127.0.0.1", port: smarthost.port, tls: "starttls", auth: { username: "alice@ours.test", password: "wrong" } },
    }).runOnce();
    const left = await store.queue.get(item.id);
    expect(left?.attempts).toBe(1);
    expect(left?.lastError).toContain("535");
  });
});

describe("logs", () => {
  it("logs one line per attempt and the queue size periodically", async () => {
    const lines: { fields: Record<string, unknown>; message: string | undefined }[] = [];
    const logger: Logger = {
      debug: () => undefined,
      info: (fields: Record<string, unknown> | string, message?: string) => {
        if (typeof fields !== "string") lines.push({ fields, message });
      },
      warn: () => undefined,
      error: () => undefined,
      child: () => logger,
    };
    const server = await scripted("127.0.0.7", 0, { rcpt: () => "451 4.7.1 greylisted" });
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const outbound = worker(store, { mxPort: server.port, logger, retrySchedule: [60_000], statsIntervalMs: 30, pollIntervalMs: 20 });
    outbound.start();
    await waitFor(() => lines.some((l) => l.message === "queue") && lines.some((l) => l.message === "delivery attempt"));
    const attempt = lines.find((l) => l.message === "delivery attempt")!.fields;
    expect(attempt).toMatchObject({ item: item.id, domain: "script.test", host: `mx.script.test[127.0.0.7]:${server.port}` });
    expect(String(attempt["result"])).toContain("451 4.7.1 greylisted");
    expect(lines.find((l) => l.message === "queue")!.fields).toMatchObject({ queued: 1, dead: 0 });
  });
});

describe("concurrency and crashes", () => {
  it("two workers on one store deliver every item exactly once", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    for (let i = 0; i < 12; i++) await enqueue(store, "alice@ours.test", [`r${i}@script.test`]);
    const a = worker(store, { mxPort: server.port, concurrency: 3 });
    const b = worker(store, { mxPort: server.port, concurrency: 3 });
    await Promise.all([a.runOnce(), b.runOnce(), a.runOnce(), b.runOnce()]);
    await Promise.all([a.runOnce(), b.runOnce()]);
    const recipients = server.received.flatMap((m) => m.to).sort();
    expect(recipients).toEqual(Array.from({ length: 12 }, (_, i) => `r${i}@script.test`).sort());
    expect(await store.queue.list()).toEqual([]);
  });

  it("opens at most perDomainConcurrency connections to one domain", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    for (let i = 0; i < 8; i++) await enqueue(store, "alice@ours.test", [`r${i}@script.test`]);
    await worker(store, { mxPort: server.port, concurrency: 8, perDomainConcurrency: 2, connectionIdleMs: 0 }).runOnce();
    expect(server.received).toHaveLength(8);
    expect(server.connections).toBe(8);
    expect(server.peak).toBeLessThanOrEqual(2);
  });

  it("delivers an item whose worker died mid-delivery once its claim expires", async () => {
    let first = true;
    const server = await scripted("127.0.0.7", 0, {
      data: () => {
        if (!first) return "250 2.0.0 ok";
        first = false;
        return null; // the first worker's transaction hangs here, then the worker "dies"
      },
    });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    // A frozen process: its renewals never complete, so its claim runs out.
    const frozenStore = overriding(store, { queue: overriding(store.queue, { renew: () => new Promise(() => undefined) }) });
    const dying = worker(frozenStore, { mxPort: server.port, claimTtlMs: 300, connectTimeoutMs: 10_000 });
    const run = dying.runOnce();
    await waitFor(() => server.connections === 1 && !first);
    await sleep(350);
    const restarted = worker(store, { mxPort: server.port, claimTtlMs: 300 });
    expect(await restarted.runOnce()).toBe(1);
    expect(server.received).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
    await dying.stop({ deadlineMs: 0 });
    await run;
    expect(await store.queue.list()).toEqual([]);
  });

  it("keeps what an attempt delivered when one claim renewal fails but the claim is still its own", async () => {
    const mx = await farMx("127.0.0.2");
    const store = await ours();
    const item = await enqueue(store, "alice@ours.test", ["bob@far.test"]);
    // The store answers one renewal with an error (briefly unreachable) while the message is read slowly.
    let failedOnce = false;
    const queue = Object.create(store.queue) as Queue;
    queue.renew = async (claim) => {
      if (!failedOnce) {
        failedOnce = true;
        throw new StoreError("unavailable", "the store did not answer");
      }
      return store.queue.renew(claim);
    };
    queue.readMessage = async (id) => {
      await sleep(400);
      return store.queue.readMessage(id);
    };
    const flaky = Object.create(store) as typeof store;
    Object.defineProperty(flaky, "queue", { value: queue });
    await worker(flaky, { mxPort: mx.port, claimTtlMs: 300 }).runOnce();
    expect(failedOnce).toBe(true);
    expect(await mailboxTexts(mx.store, "bob@far.test")).toHaveLength(1);
    expect(await store.queue.get(item.id)).toBeNull();
  });

  it("a stopped worker leaves unfinished items queued for the next one", async () => {
    let first = true;
    const server = await scripted("127.0.0.7", 0, {
      data: () => {
        if (!first) return "250 2.0.0 ok";
        first = false;
        return null;
      },
    });
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    const stopping = worker(store, { mxPort: server.port, retrySchedule: [0, 60_000], pollIntervalMs: 20 });
    stopping.start();
    await waitFor(() => !first);
    await stopping.stop({ deadlineMs: 50 });
    const left = await store.queue.list();
    expect(left).toHaveLength(1);
    expect(left[0]!.recipients[0]!.status).toBe("pending");
    await worker(store, { mxPort: server.port }).runOnce();
    expect(server.received).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
  });

  it("start() picks up new items by polling", async () => {
    const server = await scripted("127.0.0.7", 0);
    const store = await ours();
    const outbound = worker(store, { mxPort: server.port, pollIntervalMs: 20 });
    outbound.start();
    await enqueue(store, "alice@ours.test", ["x@script.test"]);
    await waitFor(() => server.received.length === 1);
    await waitFor(async () => (await store.queue.list()).length === 0);
  });
});

/** Alice sends MESSAGE through a submission listener that queues relayed mail (relayToQueue). */
async function submitThroughQueue(store: Store, recipients: string[]) {
    const server = createSmtpServer({ store, hostname: "mail.ours.test", allowLoopbackPlaintextAuth: true, hooks: { ...relayToQueue(store) } });
    const listener = await server.listen({ host: "127.0.0.1", port: 0, mode: "submission" });
    cleanups.push(async () => {
      await listener.close();
      await server.close({ deadlineMs: 100 });
    });
    const client = await SmtpSession.open({
      host: "127.0.0.1",
      port: listener.port,
      hostname: "client.test",
      tls: "none",
      auth: { username: "alice@ours.test", password: "secret" },
      timeoutMs: 5_000,
    });
    const result = await client.send({
      sender: "alice@ours.test",
      recipients: recipients,
      size: MESSAGE.length,
      eightBit: false,
      utf8: false,
      body: async () => fromBytes(MESSAGE),
    });
    await client.quit();
  return result;
}

describe("submission relay (relayToQueue)", () => {
  it("queues the transaction; the worker stores local copies and relays the rest without our Return-Path", async () => {
    const store = await ours();
    const result = await submitThroughQueue(store, ["bob@far.test", "alice@ours.test"]);
    expect([...result.recipients.values()].map((r) => r.reply.code)).toEqual([250, 250]);
    const [item] = await store.queue.list();
    expect(item).toMatchObject({ sender: "alice@ours.test", recipients: [{ address: "bob@far.test" }, { address: "alice@ours.test" }], meta: { user: "alice@ours.test" } });

    const mx = await farMx("127.0.0.2");
    await worker(store, { mxPort: mx.port }).runOnce();
    const [local] = await mailboxTexts(store, "alice@ours.test");
    expect(local).toMatch(/^Return-Path: <alice@ours\.test>\r\nReceived: from client\.test /);
    expect(local!.endsWith(`\r\n${MESSAGE}`)).toBe(true);
    const [remote] = await mailboxTexts(mx.store, "bob@far.test");
    // The far MX writes its own Return-Path; ours must not travel along.
    expect(remote!.match(/^Return-Path:/gim)).toHaveLength(1);
    expect(remote).toMatch(/^Return-Path: <alice@ours\.test>\r\nReceived: from mail\.ours\.test [^]*\r\nReceived: from client\.test /);
    expect(remote!.endsWith(`\r\n${MESSAGE}`)).toBe(true);
    expect(await store.queue.list()).toEqual([]);
  });

  it("queues a bare <postmaster> qualified, so the worker delivers it to the local postmaster", async () => {
    const store = await ours();
    await store.directory.addAlias({ source: "postmaster@ours.test", target: "alice@ours.test" });
    const result = await submitThroughQueue(store, ["postmaster", "bob@far.test"]);
    expect([...result.recipients.values()].map((r) => r.reply.code)).toEqual([250, 250]);
    const [item] = await store.queue.list();
    expect(item).toMatchObject({ recipients: [{ address: "postmaster@ours.test" }, { address: "bob@far.test" }] });

    const mx = await farMx("127.0.0.2");
    await worker(store, { mxPort: mx.port }).runOnce();
    const [local] = await mailboxTexts(store, "alice@ours.test");
    expect(local!.endsWith(`\r\n${MESSAGE}`)).toBe(true);
    expect(await mailboxTexts(mx.store, "bob@far.test")).toHaveLength(1);
    expect(await store.queue.list()).toEqual([]);
  });

  it("bounces queued local recipients that do not exist", async () => {
    const store = await ours();
    await enqueue(store, "alice@ours.test", ["ghost@ours.test", "alice@ours.test"]);
    await worker(store, { mxPort: 9 }).runOnce();
    const texts = await mailboxTexts(store, "alice@ours.test");
    expect(texts).toHaveLength(2);
    const dsn = parseDsn(texts.find((t) => t.includes("multipart/report"))!.slice("Return-Path: <>\r\n".length));
    expect(dsn.recipients.map((r) => [r["final-recipient"], r.status])).toEqual([["rfc822; ghost@ours.test", "5.1.1"]]);
  });
});
