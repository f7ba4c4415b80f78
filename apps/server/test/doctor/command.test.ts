import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { doctorCommand } from "../../src/doctor/command.js";
import { ADDRESS, PASSWORD, closedPort, collector, removeTempDirs, selfSigned, startServers } from "./fixtures.js";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  removeTempDirs();
});

describe("doctorCommand (the body of mailroom doctor)", () => {
  it("checks the listeners of a loaded configuration, trusts the development certificate, and exits 0", async () => {
    const material = selfSigned("localhost");
    const s = await startServers(material);
    try {
      const cwd = mkdtempSync(join(tmpdir(), "doctor-cmd-"));
      dirs.push(cwd);
      mkdirSync(join(cwd, "data", ".tls"), { recursive: true });
      writeFileSync(join(cwd, "data", ".tls", "cert.pem"), material.cert);
      const port = (name: Parameters<typeof s.target>[0]): string => `127.0.0.1:${s.target(name).port}`;
      const config = loadConfig({
        cwd,
        env: {
          MAILROOM_SMTP_LISTEN: port("smtp"),
          MAILROOM_SMTP_SUBMISSION: port("submission"),
          MAILROOM_SMTP_SUBMISSIONS: port("submissions"),
          MAILROOM_POP3_LISTEN: port("pop3"),
          MAILROOM_POP3_POP3S: port("pop3s"),
        },
      });
      const out = collector();
      const code = await doctorCommand(config, { account: { address: ADDRESS, password: PASSWORD }, out: out.out });
      expect(code, out.text()).toBe(0);
      expect(out.lines[0]).toBe(`trusting the development certificate ${join(cwd, "data", ".tls", "cert.pem")}`);
      expect(out.text().match(/✔ certificate chain trusted \(by --ca\)/g)).toHaveLength(5);
      expect(out.text()).not.toContain(PASSWORD);

      const only = collector();
      expect(await doctorCommand(config, { only: ["pop3s"], host: "mail.example.test", out: only.out })).toBe(1);
      expect(only.text()).toMatch(/^pop3s /m);
      expect(only.text()).not.toMatch(/^smtp /m);
      expect(only.text()).toMatch(/✘ certificate name mismatch: it does not cover mail\.example\.test/);
    } finally {
      await s.close();
    }
  });

  it("exits 1 when a configured listener is not reachable", async () => {
    const port = await closedPort();
    const config = loadConfig({
      cwd: tmpdir(),
      env: { MAILROOM_SMTP_LISTEN: `0.0.0.0:${port}`, MAILROOM_SMTP_SUBMISSION: "", MAILROOM_SMTP_SUBMISSIONS: "", MAILROOM_POP3_LISTEN: "", MAILROOM_POP3_POP3S: "" },
    });
    const out = collector();
    expect(await doctorCommand(config, { out: out.out })).toBe(1);
    expect(out.lines).toContain(`  ✘ connection refused by 127.0.0.1:${port}`);
  });

  it("refuses an unreadable --ca file as a usage error", async () => {
    const config = loadConfig({ cwd: tmpdir(), env: {} });
    await expect(doctorCommand(config, { caFile: "/nonexistent/ca.pem", out: () => {} })).rejects.toThrow(/--ca \/nonexistent\/ca\.pem: cannot read: no such file/);
  });
});
