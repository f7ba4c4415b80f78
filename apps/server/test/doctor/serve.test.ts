import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hashPassword } from "@mailroom/store";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig, parseListen } from "../../src/config.js";
import { runDoctor, type DoctorTarget, type TargetName } from "../../src/doctor/index.js";
import { createLogger } from "../../src/logger.js";
import { startServer } from "../../src/serve.js";
import { collector } from "./fixtures.js";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe("runDoctor against the server that mailroom serve starts", () => {
  it("finds the development setup healthy, with its generated certificate trusted", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "doctor-serve-"));
    dirs.push(cwd);
    const any = "127.0.0.1:0";
    const config = loadConfig({
      cwd,
      env: {
        MAILROOM_STORE_URL: "memory:",
        MAILROOM_SMTP_LISTEN: any,
        MAILROOM_SMTP_SUBMISSION: any,
        MAILROOM_SMTP_SUBMISSIONS: any,
        MAILROOM_POP3_LISTEN: any,
        MAILROOM_POP3_POP3S: any,
      },
    });
    const server = await startServer(config, createLogger("silent"));
    try {
      const password = "dev-Doctor-pw-7";
      await server.store.directory.addAccount({ address: "dev@localhost", passwordHash: await hashPassword(password, { logN: 10 }) });
      const targets: DoctorTarget[] = server.listeners.map((l) => {
        const { host, port } = parseListen(l.address, "test");
        return { name: l.name as TargetName, host, port, implicitTls: l.name === "submissions" || l.name === "pop3s" };
      });
      expect(targets.map((t) => t.name).sort()).toEqual(["pop3", "pop3s", "smtp", "submission", "submissions"]);
      const out = collector();
      const result = await runDoctor({
        targets,
        expectedHostname: "localhost",
        ca: readFileSync(join(cwd, "data", ".tls", "cert.pem"), "utf8"),
        account: { address: "dev@localhost", password },
        timeoutMs: 5000,
        out: out.out,
      });
      expect(result.ok, out.text()).toBe(true);
      expect(out.text()).not.toMatch(/^ {2}[!✘]/m);
      expect(out.text().match(/✔ AUTH PLAIN as dev@localhost: 235/g)).toHaveLength(2);
      expect(out.text().match(/✔ STAT: 0 messages, 0 octets/g)).toHaveLength(2);
      expect(out.text()).not.toContain(password);
    } finally {
      await server.stop();
    }
  });
});
