import { createHash } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBytes, type Mailbox, type Store } from "@mailroom/store";
import { ALICE, fixtureStore, LineClient, startServer, type Running } from "./helpers.js";

const SIZE = 50 * 1024 * 1024;

function collectGarbage(): (() => void) | undefined {
  try {
    setFlagsFromString("--expose-gc");
    return runInNewContext("gc") as () => void;
  } catch {
    return undefined;
  }
}

/** 50 MiB of 1 KiB blocks, each with a line that needs dot-stuffing. */
function bigMessage(): string {
  const block = `.dot line\r\n${"x".repeat(1024 - 11 - 2)}\r\n`;
  return `Subject: big\r\n\r\n${block.repeat(SIZE / 1024 - 1)}${"y".repeat(1024 - 16 - 2)}\r\n`;
}

let running: Running;
let expectedHash: string;
/** Octets the server has pulled from the store so far. */
let pulled = 0;

beforeAll(async () => {
  const text = bigMessage();
  expect(text.length).toBe(SIZE);
  const base = await fixtureStore();
  const big = base.mailbox("bob@example.test");
  await big.append(fromBytes(text, 256 * 1024));
  expectedHash = createHash("sha256")
    .update(`+OK ${SIZE} octets\r\n${text.replace(/\n\./g, "\n..")}.\r\n`, "latin1")
    .digest("hex");
  // Count and copy what is read: the memory store hands out views of its own copy, and fresh chunks
  // are what a disk or database store would produce.
  const store = Object.create(base, {
    mailbox: {
      value: (id: string): Mailbox => {
        const real = base.mailbox(id);
        return Object.assign(Object.create(real) as Mailbox, {
          read: async (uid: string) => {
            const source = await real.read(uid);
            return (async function* () {
              for await (const chunk of source) {
                pulled += chunk.length;
                yield chunk.slice();
              }
            })();
          },
        });
      },
    },
  }) as Store;
  running = await startServer({ store });
}, 60_000);

afterAll(() => running?.close());

describe("a 50 MiB RETR", () => {
  it("streams byte-exact to a slow reader with bounded memory", async () => {
    const gc = collectGarbage();
    const client = await LineClient.connect(running.port);
    await client.line();
    client.write("USER bob@example.test\r\nPASS battery staple\r\n");
    await client.line();
    expect(await client.line()).toBe(`+OK 1 message (${SIZE} octets)`);

    // Take the socket over from the line reader: this test reads raw bytes, slowly.
    const socket = client.socket;
    socket.removeAllListeners("data");
    socket.pause();
    gc?.();
    const baseline = process.memoryUsage().arrayBuffers;
    client.write("RETR 1\r\n");

    await new Promise((resolve) => setTimeout(resolve, 1000));
    const pulledWhilePaused = pulled;
    expect(pulledWhilePaused).toBeGreaterThan(0);
    // Only what fits in socket buffers: the server waits for the reader instead of reading ahead.
    expect(pulledWhilePaused).toBeLessThan(16 * 1024 * 1024);

    const hash = createHash("sha256");
    let received = 0;
    let maxGrowth = 0;
    let tail = "";
    await new Promise<void>((resolve, reject) => {
      let sinceSample = 0;
      socket.on("data", (chunk: Buffer) => {
        hash.update(chunk);
        received += chunk.length;
        tail = (tail + chunk.toString("latin1")).slice(-5);
        sinceSample += chunk.length;
        if (sinceSample >= 2 * 1024 * 1024) {
          sinceSample = 0;
          socket.pause();
          gc?.();
          maxGrowth = Math.max(maxGrowth, process.memoryUsage().arrayBuffers - baseline);
          setTimeout(() => socket.resume(), 20);
        }
        if (tail === "\r\n.\r\n" && received > SIZE) resolve();
      });
      socket.once("close", () => reject(new Error("closed early")));
      socket.resume();
    });
    expect(hash.digest("hex")).toBe(expectedHash);
    expect(maxGrowth).toBeLessThan(gc ? 16 * 1024 * 1024 : 40 * 1024 * 1024);
    socket.write("QUIT\r\n");
    socket.destroy();
    expect((await running.store.mailbox(ALICE.login).list()).length).toBe(3);
  }, 120_000);
});
