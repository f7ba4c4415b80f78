import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ALICE, ALICE_MESSAGES, HOSTNAME, makeCert, removeCert, startServer, type Cert, type Running } from "./helpers.js";

const run = promisify(execFile);
const script = join(import.meta.dirname, "clients", "poplib_client.py");

interface PoplibResult {
  welcome: string;
  capa: string[];
  stat: [number, number];
  uidl: string[];
  messages?: string[];
  quit: string;
}

async function poplib(port: number, mode: "read" | "delete", tls: string[] = []): Promise<PoplibResult> {
  const { stdout } = await run("python3", [script, String(port), ALICE.login, ALICE.password, mode, ...tls], {
    timeout: 20_000,
  });
  return JSON.parse(stdout) as PoplibResult;
}

let cert: Cert;
let running: Running;
beforeAll(async () => {
  cert = await makeCert();
});
afterAll(async () => {
  await running?.close();
  await removeCert(cert);
});

describe("Python poplib", () => {
  it("reads in keep mode, sees the same UIDLs again, then deletes", async () => {
    running = await startServer({ expireDays: 30 });
    const first = await poplib(running.port, "read");
    expect(first.welcome).toBe(`+OK ${HOSTNAME} Mailroom POP3 server ready`);
    expect(first.capa).toEqual(expect.arrayContaining(["TOP", "UIDL", "USER", "SASL", "PIPELINING", "EXPIRE", "RESP-CODES"]));
    expect(first.stat).toEqual([3, 150]);
    expect(first.uidl).toEqual(["1 m1", "2 m2", "3 m3"]);
    // poplib hands back lines without terminators; the second message had none on its last line.
    const decoded = first.messages!.map((m) => Buffer.from(m, "base64").toString("latin1"));
    expect(decoded).toEqual([ALICE_MESSAGES[0], `${ALICE_MESSAGES[1]}\r\n`, ALICE_MESSAGES[2]]);

    const second = await poplib(running.port, "read");
    expect(second.uidl).toEqual(first.uidl);

    const third = await poplib(running.port, "delete");
    expect(third.quit).toMatch(/\(3 messages deleted\)$/);
    const fourth = await poplib(running.port, "read");
    expect(fourth.stat).toEqual([0, 0]);
    expect(fourth.uidl).toEqual([]);
    await running.close();
  }, 60_000);

  it("logs in after STLS from a non-loopback-looking peer, and over POP3S", async () => {
    const certFile = join(cert.dir, "cert.pem");
    running = await startServer({ tls: cert.context, isLocalAddress: () => false });
    const viaStls = await poplib(running.port, "read", ["--stls", certFile]);
    expect(viaStls.stat).toEqual([3, 150]);
    await running.close();
    running = await startServer({ tls: cert.context, implicitTls: true, isLocalAddress: () => false });
    const viaSsl = await poplib(running.port, "read", ["--ssl", certFile]);
    expect(viaSsl.uidl).toEqual(["1 m1", "2 m2", "3 m3"]);
    await running.close();
  }, 60_000);
});

describe("curl pop3://", () => {
  it("lists and retrieves a message", async () => {
    running = await startServer();
    const auth = `${ALICE.login}:${ALICE.password}`;
    const base = `pop3://127.0.0.1:${running.port}`;
    const list = await run("curl", ["-s", "--max-time", "10", base + "/", "-u", auth]);
    expect(list.stdout).toBe("1 53\r\n2 55\r\n3 42\r\n");
    const one = await run("curl", ["-s", "--max-time", "10", base + "/1", "-u", auth]);
    expect(one.stdout).toBe(ALICE_MESSAGES[0]);
    await running.close();
  }, 30_000);
});
