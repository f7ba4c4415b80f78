/**
 * `[server] workers = 2`: one `mailroom serve` that forks two workers on the same listeners. Seen from
 * outside it must behave like one server: mail sent over many connections (spread over both workers)
 * all arrives, POP3 still allows one session per mailbox whichever worker a connection lands on,
 * /metrics adds the workers up, a worker that dies is replaced, and SIGTERM stops everything cleanly.
 * Python's smtplib and poplib are the clients.
 */
import { readdirSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { cleanup, python, runCli, serve, tempDir, writeFile, type Served } from "./helpers.js";

afterAll(cleanup);

const PASSWORD = "cluster pass";
const dir = tempDir();
const config = writeFile(
  dir,
  "mailroom.toml",
  `hostname = "mail.example.test"
[server]
workers = 2
[store]
url = "maildir:./mail"
[smtp]
listen = ["127.0.0.1:0"]
submission = []
submissions = []
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
allow_plaintext_auth = true
[metrics]
listen = "127.0.0.1:0"
[limits]
shutdown_timeout_seconds = 3
`,
);

const SEND_MANY = `
import smtplib, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    # One connection per message, so that the primary hands them to both workers.
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("sender@remote.test", ["carol@example.test"], f"Subject: n{i}\\r\\n\\r\\nbody {i}\\r\\n")
print("sent")
`;

const IN_USE = `
import poplib, sys, json
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
first = poplib.POP3("127.0.0.1", port, timeout=10)
first.user(user)
first.pass_(password)
answers = []
# Four more logins while the first holds the mailbox: with two workers taking turns, some of them
# land on the worker that does not hold the session.
for _ in range(4):
    other = poplib.POP3("127.0.0.1", port, timeout=10)
    other.user(user)
    try:
        answers.append(other.pass_(password).decode())
    except poplib.error_proto as e:
        answers.append(str(e.args[0], "ascii"))
    other.close()
count = first.stat()[0]
uidls = [l.decode().split()[1] for l in first.uidl()[1]]
first.quit()
print(json.dumps({"answers": answers, "count": count, "uidls": uidls}))
`;

const GUESS = `
import poplib, sys, json, time
port, user, tries = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seconds = []
# One connection per guess, so that the primary hands them to both workers in turn.
for i in range(tries):
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.user(user)
    started = time.monotonic()
    try:
        p.pass_(f"wrong guess {i}")
    except poplib.error_proto:
        pass
    seconds.append(time.monotonic() - started)
    p.close()
print(json.dumps(seconds))
`;

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const metricValue = (text: string, name: string): number => {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? Number.NaN : Number(line.split(" ").pop());
};

describe("mailroom serve with two workers", () => {
  let server: Served;
  let ready: Record<string, unknown>;

  beforeAll(async () => {
    for (const args of [["domain", "add", "example.test"], ["user", "add", "carol@example.test", "--password-stdin"]]) {
      const result = await runCli([...args, "--config", config], { stdin: `${PASSWORD}\n`, cwd: dir });
      expect(result.code, result.stderr).toBe(0);
    }
    server = await serve(config, { cwd: dir });
    ready = await server.waitForLine((line) => line["msg"] === "mailroom ready" && line["workers"] === 2);
  }, 60_000);

  afterAll(async () => {
    if (server.child.exitCode === null) server.child.kill("SIGKILL");
  });

  it("starts two workers on the same ports and says so once all are up", () => {
    const listening = server.lines.filter((l) => l["msg"] === "listening" && l["listener"] === "smtp");
    expect(new Set(listening.map((l) => l["worker"]))).toEqual(new Set([0, 1]));
    // Port 0 is picked once and shared: both workers report the same address.
    expect(new Set(listening.map((l) => l["address"])).size).toBe(1);
    const listeners = ready["listeners"] as Array<{ listener: string; address: string }>;
    expect(listeners.map((l) => l.listener).sort()).toEqual(["metrics", "pop3", "smtp"]);
    // Only worker 0 runs the outbound worker; the other only queues.
    expect(server.lines.filter((l) => l["msg"] === "outbound worker started").map((l) => l["worker"])).toEqual([0]);
  });

  it("delivers mail sent over many connections, whichever worker took each", async () => {
    const smtp = Number((ready["listeners"] as Array<{ listener: string; address: string }>).find((l) => l.listener === "smtp")!.address.split(":").pop());
    expect((await python(SEND_MANY, [String(smtp), "12"])).trim()).toBe("sent");
    expect(readdirSync(join(dir, "mail", "example.test", "carol", "new")).length).toBe(12);
  }, 60_000);

  it("refuses a second POP3 session on the same mailbox on either worker", async () => {
    const pop3 = Number((ready["listeners"] as Array<{ listener: string; address: string }>).find((l) => l.listener === "pop3")!.address.split(":").pop());
    const out = JSON.parse(await python(IN_USE, [String(pop3), "carol@example.test", PASSWORD])) as {
      answers: string[];
      count: number;
      uidls: string[];
    };
    expect(out.answers).toEqual(Array(4).fill("-ERR [IN-USE] mailbox is in use by another session"));
    expect(out.count).toBe(12);
    expect(new Set(out.uidls).size).toBe(12);
  }, 60_000);

  it("adds up the workers' metrics and checks every worker's health", async () => {
    const metrics = Number((ready["listeners"] as Array<{ listener: string; address: string }>).find((l) => l.listener === "metrics")!.address.split(":").pop());
    const page = await get(metrics, "/metrics");
    expect(page.status).toBe(200);
    expect(metricValue(page.body, "mailroom_smtp_messages_received_total")).toBe(12);
    expect(metricValue(page.body, 'mailroom_connections_total{protocol="smtp"}')).toBe(12);
    expect(await get(metrics, "/healthz")).toEqual({ status: 200, body: "ok\n" });
  }, 30_000);

  it("replaces a worker that dies", async () => {
    const victim = server.lines.find((l) => l["msg"] === "store opened" && l["worker"] === 1)!["pid"];
    expect(typeof victim).toBe("number");
    process.kill(victim as number, "SIGKILL");
    await server.waitForLine((l) => l["msg"] === "worker died; starting a new one" && l["worker"] === 1);
    const replacement = await server.waitForLine((l) => l["msg"] === "store opened" && l["worker"] === 1 && l["pid"] !== victim, 30_000);
    expect(replacement["pid"]).not.toBe(victim);
    // Mail still flows after the replacement.
    const smtp = Number((ready["listeners"] as Array<{ listener: string; address: string }>).find((l) => l.listener === "smtp")!.address.split(":").pop());
    await server.waitForLine(() => server.lines.filter((l) => l["msg"] === "mailroom ready" && l["worker"] === 1).length >= 2, 30_000);
    expect((await python(SEND_MANY, [String(smtp), "4"])).trim()).toBe("sent");
    expect(readdirSync(join(dir, "mail", "example.test", "carol", "new")).length).toBe(16);
  }, 60_000);

  it("slows down password guesses spread over both workers as one server would", async () => {
    const pop3 = Number((ready["listeners"] as Array<{ listener: string; address: string }>).find((l) => l.listener === "pop3")!.address.split(":").pop());
    const seconds = JSON.parse(await python(GUESS, [String(pop3), "carol@example.test", "5"])) as number[];
    const failed = server.lines.filter((l) => l["msg"] === "login failed");
    expect(failed).toHaveLength(5);
    expect(new Set(failed.map((l) => l["worker"]))).toEqual(new Set([0, 1]));
    // Three failures are free, the fourth costs 1 s and the fifth 2 s, counted over both workers:
    // with a throttle per worker each would have seen only two or three, and answered at once.
    expect(seconds.slice(0, 3).every((s) => s < 0.9)).toBe(true);
    expect(seconds[3]).toBeGreaterThanOrEqual(0.9);
    expect(seconds[4]).toBeGreaterThanOrEqual(1.9);
  }, 60_000);

  it("stops every worker on SIGTERM and exits 0, also when every process gets one (systemctl stop)", async () => {
    // systemd's default KillMode signals every process of the unit; the primary then sends each worker
    // its own SIGTERM as well. A worker must not take the second one for "exit now".
    const workers = new Map<unknown, number>();
    for (const l of server.lines) if (l["msg"] === "store opened" && l["worker"] !== undefined) workers.set(l["worker"], l["pid"] as number);
    expect(workers.size).toBe(2);
    server.child.kill("SIGTERM");
    for (const pid of workers.values()) process.kill(pid, "SIGTERM");
    expect(await server.exited).toBe(0);
    expect(server.lines.filter((l) => String(l["msg"]).startsWith("second signal"))).toEqual([]);
    const stopped = server.lines.filter((l) => l["msg"] === "stopped");
    expect(stopped.map((l) => l["worker"] ?? "primary").sort()).toEqual([0, 1, "primary"].sort());
  }, 30_000);
});

describe("mailroom serve with two workers, when the primary is killed", () => {
  const killedDir = tempDir();
  const killedConfig = writeFile(
    killedDir,
    "mailroom.toml",
    `hostname = "mail.example.test"
[server]
workers = 2
[store]
url = "maildir:./mail"
[smtp]
listen = ["127.0.0.1:0"]
submission = []
submissions = []
[pop3]
listen = []
pop3s = []
[limits]
shutdown_timeout_seconds = 5
`,
  );

  it("lets the workers finish the message in flight, then stop and exit", async () => {
    for (const args of [["domain", "add", "example.test"], ["user", "add", "dave@example.test", "--password-stdin"]]) {
      const result = await runCli([...args, "--config", killedConfig], { stdin: `${PASSWORD}\n`, cwd: killedDir });
      expect(result.code, result.stderr).toBe(0);
    }
    const served = await serve(killedConfig, { cwd: killedDir });
    await served.waitForLine(() => served.lines.filter((l) => l["msg"] === "mailroom ready" && l["worker"] !== undefined).length === 2);
    const workers = served.lines.filter((l) => l["msg"] === "store opened" && l["worker"] !== undefined).map((l) => l["pid"] as number);
    expect(workers).toHaveLength(2);
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const socket = connect(served.port("smtp"), "127.0.0.1");
    try {
      let received = "";
      socket.setEncoding("utf8").on("data", (d: string) => (received += d));
      socket.on("error", () => {});
      /** Sends `text` and waits for the last line of a reply with `code`; returns all that came meanwhile. */
      const say = async (text: string, code: string): Promise<string> => {
        const from = received.length;
        if (text) socket.write(text);
        await vi.waitFor(() => expect(received.slice(from)).toMatch(new RegExp(`(^|\\n)${code} [^\\n]*\\r\\n`)), 10_000);
        return received.slice(from);
      };
      await say("", "220");
      await say("EHLO client.example.net\r\n", "250");
      await say("MAIL FROM:<sender@remote.test>\r\n", "250");
      await say("RCPT TO:<dave@example.test>\r\n", "250");
      await say("DATA\r\n", "354");
      socket.write("Subject: in flight\r\n\r\nfirst half\r\n");
      served.child.kill("SIGKILL");
      await served.exited;
      // The rest comes after the primary is gone: the worker holding the session must still be there.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await say("second half\r\n.\r\n", "250")).toMatch(/^250 /);
      // Both workers stop on their own, as on SIGTERM, and exit.
      await vi.waitFor(() => expect(workers.filter(alive)).toEqual([]), 15_000);
      const gone = served.lines.filter((l) => l["msg"] === "signal received, stopping" && l["signal"] === "primary gone");
      expect(gone.map((l) => l["worker"]).sort()).toEqual([0, 1]);
      expect(served.lines.filter((l) => l["msg"] === "stopped").map((l) => l["worker"]).sort()).toEqual([0, 1]);
      expect(readdirSync(join(killedDir, "mail", "example.test", "dave", "new"))).toHaveLength(1);
    } finally {
      socket.destroy();
      for (const pid of workers) if (alive(pid)) process.kill(pid, "SIGKILL");
    }
  }, 60_000);
});
