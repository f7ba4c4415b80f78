// The helper thread that makes small deliveries' file calls: what it writes, how its failures look to
// the store, that it never holds a finished program open, and that the store goes on without it.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { readAll } from "@mailroom/store";
import { createFsStore } from "../src/index.js";
import { FileThread } from "../src/filethread.js";
import { tempRoot, text } from "./helpers.js";

const root = await tempRoot("filethread");
const run = promisify(execFile);

describe("the file thread", () => {
  it("creates, writes and stamps a file, then renames it", async () => {
    const thread = (await FileThread.start())!;
    const path = join(root, "a.tmp");
    const stamp = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
    await thread.writeNew(path, [Buffer.from("Subject: one\r\n"), Buffer.from("\r\nbody\r\n")], stamp);
    expect(readFileSync(path, "latin1")).toBe("Subject: one\r\n\r\nbody\r\n");
    // As list() reads it: rounded to the millisecond (the file system keeps nanoseconds from a float).
    expect(Math.round(statSync(path).mtimeMs)).toBe(stamp);
    await thread.rename(path, join(root, "a.msg"));
    expect(existsSync(path)).toBe(false);
    expect(readFileSync(join(root, "a.msg"), "latin1")).toBe("Subject: one\r\n\r\nbody\r\n");
  });

  it("fails like the file call would, and leaves an existing file alone", async () => {
    const thread = (await FileThread.start())!;
    const path = join(root, "taken");
    writeFileSync(path, "first");
    await expect(thread.writeNew(path, [Buffer.from("second")], Date.now())).rejects.toMatchObject({ code: "EEXIST", syscall: "open", path });
    expect(readFileSync(path, "latin1")).toBe("first");
    await expect(thread.writeNew(join(root, "no-such-dir", "x"), [Buffer.from("x")], Date.now())).rejects.toMatchObject({ code: "ENOENT" });
    await expect(thread.rename(join(root, "missing"), join(root, "elsewhere"))).rejects.toMatchObject({ code: "ENOENT", syscall: "rename" });
  });

  it("answers many calls made at once, each with its own outcome", async () => {
    const thread = (await FileThread.start())!;
    const dir = join(root, "many");
    mkdirSync(dir);
    writeFileSync(join(dir, "7"), "taken");
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => thread.writeNew(join(dir, String(i)), [Buffer.from(`message ${i}`)], Date.now())),
    );
    expect(outcomes.filter((o) => o.status === "rejected")).toHaveLength(1);
    expect(outcomes[7]!.status).toBe("rejected");
    expect(readFileSync(join(dir, "7"), "latin1")).toBe("taken");
    expect(readFileSync(join(dir, "49"), "latin1")).toBe("message 49");
  });

  it("renames a published file only once the log is durable past its record, right after that append", async () => {
    const thread = (await FileThread.start())!;
    const dir = join(root, "publish");
    mkdirSync(dir);
    const log = join(dir, "x.log");
    await thread.writeNew(join(dir, "one.tmp"), [Buffer.from("one")], Date.now(), true);
    // The record ends at octet 10: an append that ends at 6 does not let it through, one to 10 does.
    let renamed = false;
    const published = thread.publish(join(dir, "one.tmp"), join(dir, "one.msg"), log, 10).then(() => (renamed = true));
    // The first append creates the log (and would fail if it existed).
    await thread.append(log, { dir, unsyncable: [] }, 0, [Buffer.from("abc"), Buffer.from("def")]);
    expect(renamed).toBe(false);
    expect(existsSync(join(dir, "one.tmp"))).toBe(true);
    await thread.append(log, null, 6, [Buffer.from("ghij")]);
    await published;
    expect(readFileSync(join(dir, "one.msg"), "latin1")).toBe("one");
    expect(readFileSync(log, "latin1")).toBe("abcdefghij");
    // Already durable that far: published at once.
    await thread.writeNew(join(dir, "two.tmp"), [Buffer.from("two")], Date.now(), true);
    await thread.publish(join(dir, "two.tmp"), join(dir, "two.msg"), log, 8);
    expect(readFileSync(join(dir, "two.msg"), "latin1")).toBe("two");
    await thread.forget(log);
  });

  it("publishes nothing once an append failed, the log was abandoned, or the file's write failed", async () => {
    const thread = (await FileThread.start())!;
    const dir = join(root, "unpublished");
    mkdirSync(dir);
    // A log that already exists cannot be created: its first append fails.
    const log = join(dir, "bad.log");
    writeFileSync(log, "");
    await thread.writeNew(join(dir, "a.tmp"), [Buffer.from("a")], Date.now(), true);
    const waiting = thread.publish(join(dir, "a.tmp"), join(dir, "a.msg"), log, 5);
    await expect(thread.append(log, { dir, unsyncable: [] }, 0, [Buffer.from("12345")])).rejects.toMatchObject({ code: "EEXIST" });
    await expect(waiting).rejects.toThrow(/delivery log failed/);
    // Later appends and publishes for that log fail at once, even where the bytes would be durable.
    await expect(thread.append(log, null, 5, [Buffer.from("6")])).rejects.toThrow(/delivery log failed/);
    await expect(thread.publish(join(dir, "a.tmp"), join(dir, "a.msg"), log, 0)).rejects.toThrow(/delivery log failed/);
    expect(existsSync(join(dir, "a.msg"))).toBe(false);
    expect(readFileSync(log, "latin1")).toBe("");
    const other = join(dir, "other.log");
    await thread.writeNew(join(dir, "b.tmp"), [Buffer.from("b")], Date.now(), true);
    const held = thread.publish(join(dir, "b.tmp"), join(dir, "b.msg"), other, 1);
    await thread.abandon(other);
    await expect(held).rejects.toThrow(/delivery log failed/);
    expect(existsSync(join(dir, "b.msg"))).toBe(false);
    // A write that failed: its publish fails even though a file of that name exists.
    writeFileSync(join(dir, "c.tmp"), "someone else's");
    await expect(thread.writeNew(join(dir, "c.tmp"), [Buffer.from("c")], Date.now(), true)).rejects.toMatchObject({ code: "EEXIST" });
    await expect(thread.publish(join(dir, "c.tmp"), join(dir, "c.msg"), join(dir, "third.log"), 0)).rejects.toThrow(/not written/);
    expect(existsSync(join(dir, "c.msg"))).toBe(false);
    await thread.forget(log);
    await thread.forget(other);
  });

  it("does not keep a finished program running, and keeps it running while a delivery waits", async () => {
    // The built package, as a user's program would import it (CI builds before it tests).
    const entry = fileURLToPath(new URL("../dist/index.js", import.meta.url));
    const threadEntry = fileURLToPath(new URL("../dist/filethread.js", import.meta.url));
    const dir = join(root, "program");
    const script = [
      `const { createFsStore } = await import(${JSON.stringify(entry)});`,
      `const { FileThread } = await import(${JSON.stringify(threadEntry)});`,
      `const store = await createFsStore({ root: ${JSON.stringify(dir)}, deliveryLogMs: 50 });`,
      `const body = async function* () { yield new TextEncoder().encode("Subject: hi\\r\\n\\r\\nhello\\r\\n"); };`,
      // The first delivery starts the thread; once it runs, the second one's calls wait on it alone.
      `await store.deliver(["alice@example.test"], body());`,
      `if ((await FileThread.start()) === null) throw new Error("no file thread");`,
      `const [done] = await store.deliver(["alice@example.test"], body());`,
      `console.log(done.message.uid);`,
    ].join("\n");
    const started = Date.now();
    // No close(): the program simply ends once its last await is done.
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { timeout: 20_000 });
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(stdout.trim()).toMatch(/\S/);
    const store = await createFsStore({ root: dir });
    expect(await store.mailbox("alice@example.test").list()).toHaveLength(2);
    await store.close();
  });

  it("once stopped, fails what it had not answered, and deliveries go on through the thread pool", async () => {
    const thread = (await FileThread.start())!;
    const pending = thread.writeNew(join(root, "late"), [Buffer.from("late")], Date.now());
    thread.close();
    await expect(pending).rejects.toThrow(/file thread stopped/);
    await expect(thread.rename(join(root, "a"), join(root, "b"))).rejects.toThrow(/file thread stopped/);
    expect(FileThread.shared()).toBeNull();
    const dir = join(root, "after");
    const store = await createFsStore({ root: dir });
    const [done] = await store.deliver(["alice@example.test"], text("Subject: after\r\n\r\nstill here\r\n"));
    const body = new TextDecoder().decode(await readAll(await store.mailbox("alice@example.test").read(done!.message.uid)));
    expect(body).toContain("still here");
    await store.close();
    expect(readdirSync(join(dir, "example.test", "alice", "new"))).toHaveLength(1);
  });
});
