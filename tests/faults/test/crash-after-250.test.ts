// Fault 2: SIGKILL the moment the last of N "250" replies arrives, while other sessions are still
// mid-transaction. After a restart every message that got a 250 is in the mailbox exactly once, and
// no message is there twice.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, LineClient, message, messageIds, peek, serve, smtpOpen, smtpSend, storeSetup, stores, tempDir,
  uniqueTag, writeConfig, type Running,
} from "./harness.js";

afterAll(cleanup);

const TARGET = 24;
const SESSIONS = 4;

describe.each(stores)("store %s", (kind) => {
  it(`every 250 survives a SIGKILL right after the ${TARGET}th, nothing twice`, async () => {
    const tag = uniqueTag();
    const dir = tempDir(`after250-${kind}`);
    const store = storeSetup(kind, dir, tag);
    const config = writeConfig(dir, store);
    const [rcpt] = addUsers(config, ["acked"]);
    const server: Running = await serve(config);

    const acked: string[] = [];
    let killed = false;
    const session = async (worker: number): Promise<void> => {
      let client: LineClient;
      try {
        client = await smtpOpen(server.smtp);
      } catch {
        return;
      }
      for (let n = 0; !killed; n++) {
        const id = `m${worker}x${n}${tag}`;
        let reply: string;
        try {
          reply = await smtpSend(client, rcpt!, message(id, rcpt!, 2_000 * (n % 5)));
        } catch {
          return; // the kill cut this transaction short; it never got its 250
        }
        if (!reply.startsWith("250")) throw new Error(`refused before the kill: ${reply}`);
        acked.push(id);
        if (acked.length >= TARGET && !killed) {
          killed = true;
          // Synchronously, in the same tick as the 250 was read: no chance for anything to settle.
          process.kill(server.pid, "SIGKILL");
        }
      }
      client.close();
    };
    await Promise.all(Array.from({ length: SESSIONS }, (_, worker) => session(worker)));
    await server.exited;
    expect(acked.length).toBeGreaterThanOrEqual(TARGET);

    if (kind === "fs") {
      // The killed server left its delivery log behind (it retires it about once a second).
      expect(readdirSync(join(dir, "mail", ".log")).some((name) => name.endsWith(".log"))).toBe(true);
    }
    const restarted = await serve(config);
    if (kind === "fs") {
      // Opening the store replayed and deleted it.
      expect(readdirSync(join(dir, "mail", ".log")).filter((name) => name.endsWith(".log"))).toEqual([]);
    }
    const found = [...(await peek(restarted.pop3, rcpt!, messageIds)).values()];
    const counts = new Map<string, number>();
    for (const id of found) counts.set(id, (counts.get(id) ?? 0) + 1);
    expect([...counts].filter(([, count]) => count > 1)).toEqual([]);
    expect(acked.filter((id) => !counts.has(id))).toEqual([]);
    // Anything beyond the acknowledged set can only be a transaction whose 250 the kill swallowed.
    expect(found.length - acked.length).toBeLessThanOrEqual(SESSIONS);
    process.kill(restarted.pid, "SIGKILL");
    await restarted.exited;
  });
});

describe("store fs, delivery log written over a retired file", () => {
  it("every 250 survives a SIGKILL while the log reuses a retired file, nothing twice", async () => {
    const tag = uniqueTag();
    const dir = tempDir("after250-reuse");
    const config = writeConfig(dir, storeSetup("fs", dir, tag));
    const [rcpt] = addUsers(config, ["acked"]);
    const server: Running = await serve(config);
    const client = await smtpOpen(server.smtp);
    const acked: string[] = [];
    const send = async (n: number): Promise<void> => {
      const id = `r${n}${tag}`;
      expect(await smtpSend(client, rcpt!, message(id, rcpt!, 2_000 * (n % 5)))).toMatch(/^250/);
      acked.push(id);
    };
    const logDir = join(dir, "mail", ".log");
    const logs = (): string[] => readdirSync(logDir).filter((name) => name.endsWith(".log"));
    for (let n = 0; n < 10; n++) await send(n);
    const [log] = logs();
    const firstRecord = (): string => readFileSync(join(logDir, log!)).subarray(0, 512).toString("latin1");
    const written = firstRecord();
    // The log is retired about once a second: its file stays, with a new owner record (another
    // generation) over the first one, and the next records go over the old ones.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(logs()).toEqual([log]);
    expect(firstRecord()).not.toBe(written);
    for (let n = 10; n < 20; n++) await send(n);
    expect(logs()).toEqual([log]);
    process.kill(server.pid, "SIGKILL");
    await server.exited;

    const restarted = await serve(config);
    expect(logs()).toEqual([]);
    const found = [...(await peek(restarted.pop3, rcpt!, messageIds)).values()];
    expect(found.sort()).toEqual([...acked].sort());
    process.kill(restarted.pid, "SIGKILL");
    await restarted.exited;
  });
});
