/**
 * `[metrics] listen`: a real `mailroom serve`, real clients (nodemailer, Python's poplib), then
 * `GET /metrics` and `GET /healthz` over HTTP. The store is the memory store behind a small adapter
 * module whose ping can be told (through a file) to fail or to hang, so the health check's 503s are
 * seen as an operator would see them.
 */
import { writeFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTransport } from "nodemailer";
import { cleanup, python, serve, tempDir, writeFile, type Served } from "./helpers.js";

afterAll(cleanup);

const PASSWORD = "metrics pass";
const dir = tempDir();
const pingFile = join(dir, "ping-mode");
const storeModule = (path: string): string => pathToFileURL(fileURLToPath(new URL(`../node_modules/@mailroom/store/dist/${path}`, import.meta.url))).href;

writeFile(
  dir,
  "flaky-adapter.mjs",
  `import { readFileSync } from "node:fs";
import { hashPassword } from ${JSON.stringify(storeModule("index.js"))};
import { createMemoryStore } from ${JSON.stringify(storeModule("memory/index.js"))};

const mode = () => { try { return readFileSync(${JSON.stringify(pingFile)}, "utf8").trim(); } catch { return "ok"; } };

export default {
  name: "flaky",
  schemes: ["flaky"],
  async open() {
    const store = createMemoryStore();
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({ address: "alice@example.test", passwordHash: await hashPassword(${JSON.stringify(PASSWORD)}) });
    const ping = async () => {
      if (mode() === "fail") throw new Error("backend unavailable (told so by the test)");
      if (mode() === "hang") await new Promise(() => {});
      return store.ping();
    };
    return new Proxy(store, {
      get(target, property) {
        if (property === "ping") return ping;
        const value = target[property];
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  },
};
`,
);
const config = writeFile(
  dir,
  "mailroom.toml",
  `hostname = "mail.example.test"
[store]
url = "flaky:one"
adapter_modules = ["./flaky-adapter.mjs"]
[smtp]
listen = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = []
allow_loopback_plaintext_auth = true
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
allow_plaintext_auth = true
[outbound]
enabled = false
[metrics]
listen = "127.0.0.1:0"
`,
);

function get(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method: "GET", timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, type: String(res.headers["content-type"]), body }));
    });
    req.on("error", reject);
    req.end();
  });
}

/** The value of one sample line, e.g. `mailroom_connections_total{protocol="smtp"}`; NaN if absent. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
}

const RETR = `
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
p.user("alice@example.test")
p.pass_(sys.argv[2])
total = sum(len(l) + 2 for l in p.retr(1)[1])
p.quit()
print(total)
`;

let server: Served;
let port = 0;

beforeAll(async () => {
  server = await serve(config, { cwd: dir });
  port = server.port("metrics");
});

describe("metrics and health over HTTP", () => {
  it("serves the Prometheus text format with session, message, auth, store and process metrics", async () => {
    const message = "From: alice@example.test\r\nTo: alice@example.test\r\nSubject: counted\r\n\r\nOne message.\r\n";
    const send = (pass: string) =>
      createTransport({
        host: "127.0.0.1",
        port: server.port("submission"),
        secure: false,
        ignoreTLS: true,
        name: "client.example.net",
        auth: { user: "alice@example.test", pass },
      }).sendMail({ envelope: { from: "alice@example.test", to: ["alice@example.test"] }, raw: message });
    await expect(send("wrong password")).rejects.toThrow(/535/);
    await send(PASSWORD);
    // POP3 counts what RETR sent, byte for byte (poplib strips the dot-stuffing and line ends we add back).
    const retrieved = Number(await python(RETR, [String(server.port("pop3")), PASSWORD]));

    const { status, type, body } = await get(port, "/metrics");
    expect(status).toBe(200);
    expect(type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(sample(body, 'mailroom_connections_total{protocol="smtp"}')).toBeGreaterThanOrEqual(2);
    expect(sample(body, 'mailroom_connections_total{protocol="pop3"}')).toBe(1);
    expect(sample(body, 'mailroom_connections{protocol="pop3"}')).toBe(0);
    expect(sample(body, 'mailroom_commands_total{protocol="smtp",command="EHLO"}')).toBeGreaterThanOrEqual(2);
    expect(sample(body, 'mailroom_commands_total{protocol="smtp",command="AUTH"}')).toBe(2);
    expect(sample(body, 'mailroom_commands_total{protocol="smtp",command="DATA"}')).toBe(1);
    expect(sample(body, 'mailroom_commands_total{protocol="pop3",command="RETR"}')).toBe(1);
    expect(sample(body, 'mailroom_commands_total{protocol="pop3",command="USER"}')).toBe(1);
    expect(sample(body, 'mailroom_auth_failures_total{protocol="smtp"}')).toBe(1);
    expect(sample(body, "mailroom_smtp_messages_received_total")).toBe(1);
    expect(sample(body, "mailroom_smtp_received_bytes_total")).toBeGreaterThanOrEqual(message.length);
    expect(sample(body, "mailroom_pop3_messages_retrieved_total")).toBe(1);
    expect(sample(body, "mailroom_pop3_retrieved_bytes_total")).toBe(retrieved);
    expect(sample(body, 'mailroom_queue_items{state="queued"}')).toBe(0);
    expect(sample(body, "mailroom_queue_oldest_age_seconds")).toBe(0);
    expect(sample(body, 'mailroom_store_operation_duration_seconds_count{operation="directory.getAccount",outcome="ok"}')).toBeGreaterThanOrEqual(2);
    expect(sample(body, 'mailroom_store_operation_duration_seconds_count{operation="store.deliver",outcome="ok"}')).toBe(1);
    expect(sample(body, 'mailroom_store_operation_duration_seconds_count{operation="mailbox.read",outcome="ok"}')).toBe(1);
    expect(body).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(body).toMatch(/^nodejs_heap_size_used_bytes \d/m);
  });

  it("answers /healthz with 200 ok while the store answers, 503 with the reason when it fails or hangs", async () => {
    expect(await get(port, "/healthz")).toMatchObject({ status: 200, body: "ok\n" });

    writeFileSync(pingFile, "fail");
    expect(await get(port, "/healthz")).toMatchObject({ status: 503, body: "store ping failed: backend unavailable (told so by the test)\n" });

    writeFileSync(pingFile, "hang");
    const started = Date.now();
    expect(await get(port, "/healthz")).toMatchObject({ status: 503, body: "store did not answer within 2000 ms\n" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);

    rmSync(pingFile);
    expect(await get(port, "/healthz")).toMatchObject({ status: 200, body: "ok\n" });
    expect(await get(port, "/nothing")).toMatchObject({ status: 404 });
  });

  it("holds at most 16 connections on the metrics port, so idle ones cannot take the mail listeners' descriptors", async () => {
    const sockets = await Promise.all(
      Array.from({ length: 40 }, () => new Promise<Socket>((resolve, reject) => {
        const socket = connect(port, "127.0.0.1", () => resolve(socket));
        socket.on("error", reject);
      })),
    );
    const closed = sockets.map((socket) => new Promise<void>((resolve) => socket.on("close", () => resolve())));
    let dropped = 0;
    for (const c of closed) void c.then(() => dropped++);
    await new Promise((resolve) => setTimeout(resolve, 500));
    // Over the cap: closed at once (the scrape in progress elsewhere gets through once they go).
    expect(dropped).toBeGreaterThanOrEqual(24);
    for (const socket of sockets) socket.destroy();
    await Promise.all(closed);
    expect(await get(port, "/healthz")).toMatchObject({ status: 200 });
  });

  it("ignores SIGUSR1 instead of opening Node's debugger to whoever connects first", async () => {
    server.child.kill("SIGUSR1");
    await server.waitForLine((line) => typeof line["msg"] === "string" && line["msg"].startsWith("SIGUSR1 ignored"));
    const inspector = await new Promise<string>((resolve) => {
      const socket = connect(9229, "127.0.0.1", () => {
        socket.destroy();
        resolve("open");
      });
      socket.on("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? "error"));
    });
    expect(inspector).toBe("ECONNREFUSED");
    expect(await get(port, "/healthz")).toMatchObject({ status: 200 });
  });

  it("logs the metrics listener's address and closes it on SIGTERM", async () => {
    expect(server.lines).toContainEqual(expect.objectContaining({ msg: "listening", listener: "metrics", address: `127.0.0.1:${port}` }));
    server.child.kill("SIGTERM");
    expect(await server.exited).toBe(0);
    await expect(get(port, "/healthz")).rejects.toThrow(/ECONNREFUSED/);
  });
});
