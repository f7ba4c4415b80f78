// Lease files and delivery logs name the process that wrote them (Linux). Once that process has
// ended, the next session or delivery worker takes the mailbox or queue item at once instead of
// waiting out the TTL; while the process runs, or where this process cannot tell (another boot,
// another pid namespace), the lease holds and the log is left to its owner.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { processStamp, StoreError, type Mailbox, type Store } from "@mailroom/store";
import { createFsStore } from "../src/index.js";
import { LOG_DIR } from "../src/deliverylog.js";
import { tempRoot, text } from "./helpers.js";

const root = await tempRoot("lease-owner");
let n = 0;
const freshRoot = (): string => join(root, `r${n++}`);
// The built package, as another server process would load it (CI builds before it tests).
const entry = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const TEN_MINUTES = 600_000;

const children = new Set<ChildProcess>();
const stores: Store[] = [];
afterEach(async () => {
  for (const child of children) child.kill("SIGKILL");
  children.clear();
  for (const store of stores.splice(0)) await store.close();
});

async function open(dir: string): Promise<Store> {
  const store = await createFsStore({ root: dir });
  stores.push(store);
  return store;
}

/** A fresh store whose alice has one message; returns its root and alice's mailbox. */
async function aliceWithMail(): Promise<{ dir: string; mailbox: Mailbox }> {
  const dir = freshRoot();
  const store = await open(dir);
  await store.deliver(["alice@example.test"], text("Subject: x\r\n\r\nhi\r\n"));
  return { dir, mailbox: store.mailbox("alice@example.test") };
}

/** Runs `body` in another Node process against the store at `dir`; resolves once it printed "ready". */
async function holdInChild(dir: string, body: string, options = ""): Promise<ChildProcess> {
  const script = [
    `const { createFsStore } = await import(${JSON.stringify(entry)});`,
    `const store = await createFsStore({ root: ${JSON.stringify(dir)}${options} });`,
    body,
    `process.stdout.write("ready\\n");`,
    `setInterval(() => {}, 1000);`,
  ].join("\n");
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let errors = "";
  child.stderr!.on("data", (chunk: Buffer) => (errors += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolve();
    });
    child.on("exit", (code) => reject(new Error(`child exited with ${code}: ${errors}`)));
  });
  return child;
}

async function killHard(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
  children.delete(child);
}

async function refusedAsInUse(attempt: Promise<unknown>): Promise<void> {
  const error = await attempt.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(StoreError);
  expect((error as StoreError).code).toBe("in-use");
}

describe.skipIf(processStamp() === null)("lease owners (Linux)", () => {
  it("gives a killed process's mailbox to the next session at once, and not before", async () => {
    const { dir, mailbox } = await aliceWithMail();
    const child = await holdInChild(
      dir,
      `await store.mailbox("alice@example.test").acquireLease({ holder: "pop3 in the child", ttlMs: ${TEN_MINUTES} });`,
    );
    await refusedAsInUse(mailbox.acquireLease({ holder: "test", ttlMs: 30_000 }));
    // A leftover journal would be rolled forward only for a mailbox nobody holds; listing still works.
    expect(await mailbox.list()).toHaveLength(1);

    await killHard(child);
    const lease = await mailbox.acquireLease({ holder: "test", ttlMs: 30_000 });
    await lease.renew();
    // And now this process holds it: a second session is refused as before.
    await refusedAsInUse(mailbox.acquireLease({ holder: "second", ttlMs: 30_000 }));
    await lease.release();
  });

  it("lets the next delivery worker claim a queue item a killed process had claimed", async () => {
    const dir = freshRoot();
    const store = await open(dir);
    const item = await store.queue!.enqueue({ sender: "alice@example.test", recipients: ["bob@remote.test"] }, text("Subject: out\r\n\r\nhi\r\n"));
    const child = await holdInChild(
      dir,
      `const claims = await store.queue.claim({ holder: "worker in the child", ttlMs: ${TEN_MINUTES}, limit: 1 });\n` +
        `if (claims.length !== 1) throw new Error("the child claimed nothing");`,
    );
    expect(await store.queue!.claim({ holder: "test", ttlMs: 30_000, limit: 1 })).toEqual([]);

    await killHard(child);
    const claims = await store.queue!.claim({ holder: "test", ttlMs: 30_000, limit: 1 });
    expect(claims.map((c) => c.item.id)).toEqual([item.id]);
    const renewed = await store.queue!.renew(claims[0]!);
    await store.queue!.finish(renewed);
  });
});

/** Opens and closes the store at `dir` from a process in a pid namespace of its own (needs root). */
function openInOtherNamespace(dir: string): void {
  const script = `const { createFsStore } = await import(${JSON.stringify(entry)}); await (await createFsStore({ root: ${JSON.stringify(dir)} })).close();`;
  execFileSync("unshare", ["--pid", "--fork", "--mount-proc", process.execPath, "--input-type=module", "-e", script], { stdio: "pipe" });
}

function canUnshare(): boolean {
  try {
    execFileSync("unshare", ["--pid", "--fork", "--mount-proc", "true"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

// A container started beside the server on the same kernel, sharing its volume, e.g. `docker run
// … mailroom user add`: the server's pid does not exist in there. Unprivileged runs cannot make one.
describe.skipIf(processStamp() === null || !canUnshare())("delivery logs seen from another pid namespace", () => {
  it("leaves a running server's open log alone; the server's own namespace replays it once the server is killed", async () => {
    const dir = freshRoot();
    const child = await holdInChild(
      dir,
      `await store.deliver(["alice@example.test"], (async function* () { yield new TextEncoder().encode("Subject: x\\r\\n\\r\\nhi\\r\\n"); })());`,
      ", deliveryLogMs: 600000",
    );
    const logs = (): string[] => readdirSync(join(dir, LOG_DIR)).filter((name) => name.endsWith(".log"));
    expect(logs()).toHaveLength(1);
    openInOtherNamespace(dir);
    expect(logs()).toHaveLength(1);

    await killHard(child);
    const store = await open(dir);
    expect(logs()).toEqual([]);
    expect(await store.mailbox("alice@example.test").list()).toHaveLength(1);
  });
});
