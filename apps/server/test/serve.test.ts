/** startServer in-process, on the reference memory store: retention job, listener lines, stop. */
import { afterAll, describe, expect, it } from "vitest";
import { authenticate, fromBytes, type Logger } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { loadConfig, startServer } from "../src/index.js";
import { cleanup, tempDir, writeFile } from "./helpers.js";

afterAll(cleanup);

interface Line {
  level: string;
  msg: string | undefined;
  fields: Record<string, unknown>;
}

function recordingLogger(lines: Line[], bindings: Record<string, unknown> = {}): Logger {
  const at =
    (level: string) =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      if (typeof fieldsOrMessage === "string") lines.push({ level, msg: fieldsOrMessage, fields: { ...bindings } });
      else lines.push({ level, msg: message, fields: { ...bindings, ...fieldsOrMessage } });
    };
  return {
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    child: (more) => recordingLogger(lines, { ...bindings, ...more }),
  };
}

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("startServer", () => {
  it("runs the retention job when expire_days is set, and stops cleanly", async () => {
    const namespace = `serve-test-${process.pid}-${Date.now()}`;
    const seed = createMemoryStore({ namespace });
    await seed.directory.addDomain("example.test");
    const box = seed.mailbox("alice@example.test");
    const day = 86_400_000;
    await box.append(fromBytes("Subject: old\r\n\r\nread long ago\r\n"), { retrievedAt: Date.now() - 3 * day });
    await box.append(fromBytes("Subject: recent\r\n\r\nread yesterday\r\n"), { retrievedAt: Date.now() - day });
    await box.append(fromBytes("Subject: unread\r\n\r\nnever retrieved\r\n"));

    const dir = tempDir();
    const file = writeFile(
      dir,
      "memory.toml",
      `hostname = "mail.example.test"
[store]
url = "memory:${namespace}"
[smtp]
listen = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = []
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
expire_days = 2
`,
    );
    const lines: Line[] = [];
    const server = await startServer(loadConfig({ file, env: {} }), recordingLogger(lines));

    expect(server.listeners.map((l) => [l.name, l.key])).toEqual([
      ["smtp", "smtp.listen"],
      ["submission", "smtp.submission"],
      ["pop3", "pop3.listen"],
    ]);
    for (const listener of server.listeners) expect(listener.address).toMatch(/^127\.0\.0\.1:[1-9]\d*$/);
    const ready = lines.find((l) => l.msg === "mailroom ready");
    expect(ready?.fields["listeners"]).toEqual(server.listeners.map((l) => ({ listener: l.name, address: l.address })));
    // Without [tls] the operator is told what that means.
    expect(lines.some((l) => l.level === "warn" && /no \[tls\] configured/.test(l.msg ?? ""))).toBe(true);

    await until(() => lines.some((l) => l.msg === "expire run finished"));
    expect(lines.find((l) => l.msg === "expire run finished")?.fields).toMatchObject({ removed: 1, days: 2 });
    const left = await createMemoryStore({ namespace }).mailbox("alice@example.test").list();
    expect(left).toHaveLength(2);

    await server.stop();
    expect(lines.at(-1)?.msg).toBe("stopped");
    // stop() is idempotent.
    await server.stop();
  });

  it("makes the dummy hash for unknown users before it listens, so the first unknown login is not the slow one", async () => {
    const namespace = `serve-test-timing-${process.pid}-${Date.now()}`;
    const seed = createMemoryStore({ namespace });
    await seed.directory.addDomain("example.test");
    const dir = tempDir();
    const file = writeFile(
      dir,
      "timing.toml",
      `hostname = "mail.example.test"\n[store]\nurl = "memory:${namespace}"\n[smtp]\nlisten = ["127.0.0.1:0"]\nsubmission = []\nsubmissions = []\n[pop3]\nlisten = []\npop3s = []\n`,
    );
    const server = await startServer(loadConfig({ file, env: {} }), recordingLogger([]));
    try {
      const unknownLogin = async (): Promise<number> => {
        const started = performance.now();
        expect(await authenticate(server.store.directory, "nobody@example.test", "a guess")).toBeNull();
        return performance.now() - started;
      };
      const first = await unknownLogin();
      const later = [await unknownLogin(), await unknownLogin(), await unknownLogin()];
      // Made on first use, the hash doubles the first one's work (one scrypt to make it, one to check).
      expect(first).toBeLessThan(1.5 * Math.max(...later));
    } finally {
      await server.stop();
    }
  });
});
