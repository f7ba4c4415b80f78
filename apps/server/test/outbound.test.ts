/**
 * Outbound mail end to end: `mailroom serve` with a submission listener and the delivery worker, whose
 * DNS is a dns2 server on loopback that points far.test at a second SMTP receiver (an
 * `@mailroom/smtp-protocol` MX on its own memory store) on the port set by the test-only
 * `outbound.mx_port`. A user submits with nodemailer (STARTTLS + AUTH) to a local and a remote
 * recipient; a receiver answering 4xx leaves a deferred item in `mailroom queue list`; a server
 * killed with SIGKILL while an item waits delivers it after a restart. `/metrics` shows the deferred
 * item and tells the test when the worker has rescheduled it.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { get as httpGet } from "node:http";
import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTransport } from "nodemailer";
import dns2 from "dns2";
import { hashPassword, readAll, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { createFsStore } from "@mailroom/store-fs";
import { createSmtpServer } from "@mailroom/smtp-protocol";
import { cleanup, opensslCertificate, python, runCli, serve, tempDir, writeFile, type Served } from "./helpers.js";

const PASSWORD = "s3cret pass";
const dir = tempDir();
const { cert, key } = opensslCertificate(dir);

// ---------------------------------------------------------------- DNS for far.test

type DnsServer = ReturnType<typeof dns2.createUDPServer>;
let dns: DnsServer;
let dnsAddress = "";

async function startDns(): Promise<void> {
  const { Packet } = dns2;
  dns = dns2.createUDPServer((request, send) => {
    const response = Packet.createResponseFromRequest(request);
    const question = request.questions[0];
    const name = (question?.name ?? "").toLowerCase();
    // dns2's Resource type asks for more than the plain records it encodes.
    const answers = response.answers as unknown as Record<string, unknown>[];
    const base = { name: question?.name ?? name, class: Packet.CLASS.IN, ttl: 60 };
    if (name === "far.test" && question?.type === Packet.TYPE.MX) answers.push({ ...base, type: Packet.TYPE.MX, priority: 10, exchange: "mx.far.test" });
    else if (name === "mx.far.test" && question?.type === Packet.TYPE.A) answers.push({ ...base, type: Packet.TYPE.A, address: "127.0.0.1" });
    else if (name !== "far.test" && name !== "mx.far.test") response.header.rcode = 3; // NXDOMAIN
    send(response);
  });
  await dns.listen(0, "127.0.0.1");
  dnsAddress = `127.0.0.1:${dns.address().port}`;
}

// ---------------------------------------------------------------- the far side

const far: Store = createMemoryStore();
let mxPort = 0;
type Receiver = { close(): Promise<void> };

/** The real receiver: an MX for far.test on 127.0.0.1:mxPort. */
async function startReceiver(): Promise<Receiver> {
  const smtp = createSmtpServer({ store: far, hostname: "mx.far.test" });
  await smtp.listen({ host: "127.0.0.1", port: mxPort, mode: "mx" });
  return { close: () => smtp.close({ deadlineMs: 0 }) };
}

/** A receiver that is up but says "try later" to everyone. */
async function startBusyReceiver(): Promise<Receiver> {
  const server: Server = createServer((socket) => {
    socket.on("error", () => {});
    socket.end("421 4.3.2 mx.far.test busy, try again later\r\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(mxPort, "127.0.0.1", () => resolve());
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function farMessages(address: string): Promise<Buffer[]> {
  const mailbox = far.mailbox(address);
  const out: Buffer[] = [];
  for (const info of await mailbox.list()) out.push(Buffer.from(await readAll(await mailbox.read(info.uid))));
  return out;
}

async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// ---------------------------------------------------------------- our side

const FETCH = `
import poplib, sys, json, base64
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
p.user(sys.argv[2])
p.pass_(sys.argv[3])
count = len(p.list()[1])
out = [base64.b64encode(b"\\r\\n".join(p.retr(i)[1]) + b"\\r\\n").decode() for i in range(1, count + 1)]
p.quit()
print(json.dumps(out))
`;

async function pop3Messages(port: number, user: string): Promise<Buffer[]> {
  return (JSON.parse(await python(FETCH, [String(port), user, PASSWORD])) as string[]).map((m) => Buffer.from(m, "base64"));
}

/** One sample from the server's /metrics, e.g. `mailroom_queue_items{state="queued"}`; NaN if absent. */
async function metric(series: string): Promise<number> {
  const text = await new Promise<string>((resolve, reject) => {
    httpGet({ host: "127.0.0.1", port: server.port("metrics"), path: "/metrics", timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve(body));
    }).on("error", reject);
  });
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
}
const RESCHEDULES = 'mailroom_store_operation_duration_seconds_count{operation="queue.reschedule",outcome="ok"}';

let config = "";
let server: Served;
let receiver: Receiver | null = null;
const cli = (...args: string[]) => runCli([...args, "--config", config]);

async function submit(to: string[], raw: Buffer): Promise<void> {
  const transport = createTransport({
    host: "127.0.0.1",
    port: server.port("submission"),
    secure: false,
    requireTLS: true,
    name: "client.example.net",
    auth: { user: "alice@example.test", pass: PASSWORD },
    tls: { ca: readFileSync(cert, "utf8"), servername: "localhost" },
  });
  try {
    await transport.sendMail({ envelope: { from: "alice@example.test", to }, raw });
  } finally {
    transport.close();
  }
}

beforeAll(async () => {
  await startDns();
  mxPort = await freePort();
  await far.directory.addDomain("far.test");
  const hash = await hashPassword("unused");
  for (const user of ["carol", "dave"]) await far.directory.addAccount({ address: `${user}@far.test`, passwordHash: hash });

  // 1.2 s between attempts, long enough never to run out during the test.
  const schedule = Array.from({ length: 100 }, () => "0.02").join(", ");
  config = writeFile(
    dir,
    "mailroom.toml",
    `hostname = "mail.example.test"
[store]
url = "maildir:./mail"
[smtp]
listen = []
submission = ["127.0.0.1:0"]
submissions = []
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
allow_plaintext_auth = true
[tls]
cert = "${cert}"
key = "${key}"
[limits]
shutdown_timeout_seconds = 2
[outbound]
resolver = ["${dnsAddress}"]
retry_schedule_minutes = [${schedule}]
mx_port = ${mxPort}
[metrics]
listen = "127.0.0.1:0"
`,
  );
  expect((await cli("domain", "add", "example.test")).code).toBe(0);
  for (const user of ["alice", "bob"]) {
    expect((await runCli(["user", "add", `${user}@example.test`, "--password-stdin", "--config", config], { stdin: `${PASSWORD}\n` })).code).toBe(0);
  }
  server = await serve(config, { cwd: dir });
});

afterAll(async () => {
  await receiver?.close();
  await new Promise<void>((resolve) => dns?.close(() => resolve()));
  cleanup();
});

describe("outbound delivery through mailroom serve", () => {
  it("delivers a submitted message to a local user (POP3) and, byte for byte, to a remote MX", async () => {
    expect(server.lines).toContainEqual(expect.objectContaining({ msg: "outbound worker started" }));
    receiver = await startReceiver();
    const raw = Buffer.from(
      [
        "From: Alice <alice@example.test>",
        "To: Bob <bob@example.test>, Carol <carol@far.test>",
        "Subject: outbound round trip",
        "Message-ID: <outbound-1@example.test>",
        "",
        "Hello both.",
        ".a line that starts with a dot",
        "..and one with two",
        "",
        "  trailing spaces  ",
        "",
      ].join("\r\n"),
    );
    await submit(["bob@example.test", "carol@far.test"], raw);

    const [remote] = await until("the remote copy", async () => {
      const got = await farMessages("carol@far.test");
      return got.length > 0 ? got : null;
    });
    const [local] = await until("the local copy", async () => {
      const got = await pop3Messages(server.port("pop3"), "bob@example.test");
      return got.length > 0 ? got : null;
    });
    // The local copy: Return-Path, our Received, then exactly what the client sent.
    expect(local!.toString("latin1")).toMatch(/^Return-Path: <alice@example\.test>\r\nReceived: /);
    expect(local!.subarray(local!.length - raw.length).equals(raw)).toBe(true);
    // The remote copy is what we stored without our Return-Path, after the far side's own trace lines.
    const relayed = local!.subarray(local!.indexOf("\r\n") + 2);
    expect(remote!.subarray(remote!.length - relayed.length).equals(relayed)).toBe(true);
    expect(remote!.toString("latin1")).toMatch(/^Return-Path: <alice@example\.test>\r\n/);

    const listed = await cli("queue", "list");
    expect(listed).toMatchObject({ code: 0, stdout: "Mail queue is empty\n" });
    await receiver.close();
    receiver = null;
  });

  it("keeps a message the remote MX defers, shown by mailroom queue list; survives kill -9 and is delivered after a restart", async () => {
    receiver = await startBusyReceiver();
    const raw = Buffer.from("From: alice@example.test\r\nTo: dave@far.test\r\nSubject: deferred\r\n\r\nWill you take it later?\r\n");
    await submit(["dave@far.test"], raw);

    await server.waitForLine((l) => l["msg"] === "delivery attempt" && /421/.test(String(l["result"])));
    const listed = await until("a deferred item in queue list", async () => {
      const run = await cli("queue", "list");
      return run.code === 0 && /last error: .*421/.test(run.stdout) ? run : null;
    });
    expect(listed.stdout).toMatch(/^q[0-9a-z]{21}  \d+ B  age \d+s  [1-9]\d* attempts  (next in \d+s|due now)  from <alice@example\.test>\n {4}<dave@far\.test>\n/);
    expect(listed.stdout).toMatch(/-- 1 item, \d+ B\n$/);
    const id = /^(q[0-9a-z]{21})/.exec(listed.stdout)![1]!;
    expect(await metric('mailroom_queue_items{state="queued"}')).toBe(1);
    expect(await metric("mailroom_queue_oldest_age_seconds")).toBeGreaterThan(0);
    expect(await metric("mailroom_outbound_attempts_total")).toBeGreaterThanOrEqual(2);

    // The receiver goes away. Right after the worker has rescheduled the item (the next attempt is
    // 1.2 s away, so nobody holds a claim on it) the server dies without a chance to clean up.
    await receiver.close();
    receiver = null;
    const rescheduled = await metric(RESCHEDULES);
    await until("a reschedule", async () => (await metric(RESCHEDULES)) > rescheduled);
    server.child.kill("SIGKILL");
    await server.exited;
    expect((await cli("queue", "list")).stdout).toContain(id);

    server = await serve(config, { cwd: dir });
    expect(await farMessages("dave@far.test")).toHaveLength(0);
    receiver = await startReceiver();
    const [got] = await until("the message after the restart", async () => {
      const messages = await farMessages("dave@far.test");
      return messages.length > 0 ? messages : null;
    });
    expect(got!.subarray(got!.length - raw.length).equals(raw)).toBe(true);
    await until("an empty queue", async () => ((await cli("queue", "list")).stdout === "Mail queue is empty\n" ? true : null));
  });

  it("queue retry, delete and run: exit codes and messages", async () => {
    await receiver?.close();
    receiver = null;
    await submit(["carol@far.test"], Buffer.from("Subject: to be deleted\r\n\r\nnever mind\r\n"));
    const listed = await until("the item", async () => {
      const run = await cli("queue", "list");
      return /^q[0-9a-z]{21} /.test(run.stdout) ? run : null;
    });
    const id = listed.stdout.slice(0, 22);
    expect(await cli("queue", "retry", id)).toMatchObject({ code: 0 });
    // The running worker may be trying it (and failing: no receiver) at this very instant.
    expect(await cli("queue", "retry", "--all")).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^(1 item due now|0 items due now; 1 item being delivered left as it is)\n$/),
    });
    expect(await cli("queue", "retry", "--all", id)).toMatchObject({ code: 2, stderr: expect.stringContaining("queue retry --all (no ID)") });
    expect(await cli("queue", "retry", "--all", "--force")).toMatchObject({ code: 2, stderr: expect.stringContaining("--all and --force") });
    expect(await cli("queue", "list", "--all")).toMatchObject({ code: 2, stderr: expect.stringContaining("--all only goes with queue retry") });
    // A delivery in progress (here this test holds the claim, as a worker would): retry leaves it
    // alone and says why; --force breaks the claim.
    const store = await createFsStore({ root: join(dir, "mail") });
    try {
      const [claim] = await until("a claim on the item", async () => {
        const got = await store.queue.claim({ holder: "test worker", ttlMs: 600_000, now: Date.now() + 86_400_000 });
        return got.length > 0 ? got : null;
      });
      expect(claim!.item.id).toBe(id);
      expect((await cli("queue", "list")).stdout).toMatch(new RegExp(`^${id} {2}\\d+ B {2}age \\w+ {2}\\d+ attempts {2}in delivery {2}from <`));
      const json = await cli("queue", "list", "--json");
      expect(json.code).toBe(0);
      expect(json.stdout.trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>)).toEqual([
        expect.objectContaining({ id, state: "queued", inDelivery: true, attempts: expect.any(Number), queuedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) }),
      ]);
      expect(await cli("queue", "retry", "--all")).toMatchObject({ code: 0, stdout: "0 items due now; 1 item being delivered left as it is\n" });
      expect(await cli("queue", "retry", id)).toMatchObject({
        code: 0,
        stdout: expect.stringMatching(new RegExp(`^item ${id} is being delivered right now; left as it is .*--force ${id}`)),
      });
      expect(await cli("queue", "retry", "--force", id)).toMatchObject({ code: 0, stdout: expect.stringMatching(/ is due now;/) });
      await expect(store.queue.renew(claim!)).rejects.toMatchObject({ code: "lease-lost" });
    } finally {
      await store.close();
    }
    expect(await cli("queue", "list", "--force")).toMatchObject({ code: 2, stderr: expect.stringContaining("--force only goes with queue retry") });
    expect(await cli("queue", "retry", "--json", "x")).toMatchObject({ code: 2, stderr: expect.stringContaining("--json only goes with queue list") });
    expect(await cli("queue", "delete", id)).toMatchObject({ code: 0, stdout: `deleted item ${id} (no bounce is sent)\n` });
    expect((await cli("queue", "list")).stdout).toBe("Mail queue is empty\n");
    expect(await cli("queue", "list", "--json")).toMatchObject({ code: 0, stdout: "" });
    expect(await cli("queue", "retry", "--all")).toMatchObject({ code: 0, stdout: "0 items due now\n" });

    expect(await cli("queue", "retry", "q000000000aaaaaaaaaaaa")).toMatchObject({ code: 1, stderr: "mailroom: no queue item q000000000aaaaaaaaaaaa\n" });
    expect(await cli("queue", "delete", "nonsense")).toMatchObject({ code: 2 });
    expect((await cli("queue", "delete", "nonsense")).stderr).toMatch(/"nonsense" is not a queue id/);
    expect(await cli("queue", "frob")).toMatchObject({ code: 2 });
    expect(await cli("queue", "run")).toMatchObject({ code: 0, stdout: "handled 0 items\n" });
  });

  it("stops the worker on SIGTERM before closing the store", async () => {
    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
    const messages = server.lines.map((l) => l["msg"]);
    expect(messages.indexOf("shutting down")).toBeGreaterThanOrEqual(0);
    expect(messages.indexOf("shutting down")).toBeLessThan(messages.indexOf("outbound worker stopped"));
    expect(messages.indexOf("outbound worker stopped")).toBeLessThan(messages.indexOf("stopped"));
  });
});
