// Fault 7: SIGKILL while the outbound worker is in the middle of handing a queued message to the next
// hop (a fake smarthost on loopback that has received part of the DATA). After a restart the item is
// still queued, nothing was bounced, and once delivered again the next hop gets the whole message.
// The claim names the killed process, so the restarted worker (same machine) claims the item at once
// instead of after the claim's 5-minute TTL; no operator `mailroom queue retry` is needed.
import { createServer, type Server, type Socket } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, admin, cleanup, dotStuff, LineClient, message, onCleanup, PASSWORD, serve, sleep, storeSetup, stores,
  tempDir, uniqueTag, writeConfig, peek, uidl,
} from "./harness.js";

afterAll(cleanup);

interface NextHop {
  readonly port: number;
  /** Called once the first DATA bytes of a transaction arrived; return false to never answer it. */
  onData: () => boolean;
  readonly received: string[];
}

/** A minimal SMTP receiver: says yes to everything, records complete messages it answered 250 to. */
async function nextHop(): Promise<NextHop> {
  const hop: NextHop = { port: 0, onData: () => true, received: [] };
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffer = "";
    let inData = false;
    let answer = true;
    let started = false;
    socket.setEncoding("latin1");
    socket.write("220 hop.test ESMTP\r\n");
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      for (;;) {
        if (inData) {
          if (!started && buffer.length > 0) {
            started = true;
            answer = hop.onData();
          }
          const end = buffer.indexOf("\r\n.\r\n");
          if (end < 0) return;
          const body = buffer.slice(0, end + 2).replace(/^\.\./gm, ".");
          buffer = buffer.slice(end + 5);
          inData = false;
          if (!answer) return;
          hop.received.push(body);
          socket.write("250 2.0.0 queued here\r\n");
          continue;
        }
        const at = buffer.indexOf("\r\n");
        if (at < 0) return;
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO") socket.write("250-hop.test\r\n250 8BITMIME\r\n");
        else if (verb === "DATA") {
          inData = true;
          started = false;
          socket.write("354 go ahead\r\n");
        } else if (verb === "QUIT") socket.end("221 bye\r\n");
        else socket.write("250 ok\r\n");
      }
    });
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const address = server.address();
  (hop as { port: number }).port = typeof address === "object" && address ? address.port : 0;
  onCleanup(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return hop;
}

async function submit(port: number, user: string, to: string, body: string): Promise<void> {
  const client = await LineClient.open(port);
  await client.reply("greeting");
  await client.expect("EHLO client.test", /^250/);
  await client.expect(`AUTH PLAIN ${Buffer.from(`\0${user}\0${PASSWORD}`).toString("base64")}`, /^235/);
  await client.expect(`MAIL FROM:<${user}>`, /^250/);
  await client.expect(`RCPT TO:<${to}>`, /^250/);
  await client.expect("DATA", /^354/);
  client.socket.write(`${dotStuff(body)}.\r\n`);
  const done = await client.reply("end of data");
  if (!done.startsWith("250")) throw new Error(`submission refused: ${done}`);
  await client.expect("QUIT", /^221/);
  client.close();
}

async function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

describe.each(stores)("store %s", (kind) => {
  it("SIGKILL mid-delivery keeps the queue item; it is delivered whole after restart", async () => {
    const tag = uniqueTag();
    const dir = tempDir(`outbound-${kind}`);
    const store = storeSetup(kind, dir, tag);
    const hop = await nextHop();
    const config = writeConfig(dir, store, { smarthostPort: hop.port });
    const [user] = addUsers(config, ["sender"]);
    let server = await serve(config);
    const submission = server.ports.submission;
    expect(submission).toBeGreaterThan(0);

    let killed = false;
    hop.onData = () => {
      // The worker has started streaming the message to us: this is "during delivery".
      killed = true;
      process.kill(server.pid, "SIGKILL");
      return false;
    };
    const body = message(`out${tag}`, "far@remote.test", 300_000);
    await submit(submission!, user!, "far@remote.test", body);
    await until(() => killed, "the worker to start delivering");
    await server.exited;
    expect(hop.received).toEqual([]);

    const queued = admin(config, ["queue", "list"]);
    expect(queued).toContain("<far@remote.test>");

    hop.onData = () => true;
    server = await serve(config);
    await until(() => hop.received.length > 0, "redelivery after restart");
    await until(() => admin(config, ["queue", "list"]).startsWith("Mail queue is empty"), "the queue to drain");
    expect(hop.received).toHaveLength(1);
    expect(hop.received[0]!.endsWith(body)).toBe(true);
    // No bounce went back to the sender.
    expect((await peek(server.pop3, user!, uidl)).size).toBe(0);
    process.kill(server.pid, "SIGKILL");
    await server.exited;
  });
});
