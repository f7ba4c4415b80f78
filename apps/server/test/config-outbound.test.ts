/** `[outbound]` and `[metrics]`: defaults, every key, environment overrides, and errors naming file and key. */
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/index.js";
import { readSmarthostPassword } from "../src/config.js";
import { outboundOptions } from "../src/outbound-options.js";
import { createMemoryStore } from "@mailroom/store/memory";
import { cleanup, tempDir, writeFile, errorOf } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const BASE = `hostname = "mail.example.test"
[store]
url = "memory:"
[smtp]
submissions = []
[pop3]
pop3s = []
`;
let n = 0;
const configFile = (text: string): string => writeFile(dir, `outbound-${++n}.toml`, text);

describe("[outbound] and [metrics]", () => {
  it("defaults: worker on when the store has a queue, system DNS, default schedule, no smarthost, metrics off", () => {
    const config = loadConfig({ file: configFile(BASE), env: {} });
    expect(config.outbound).toEqual({
      enabled: null,
      resolver: [],
      retrySchedule: null,
      queueLifetimeHours: null,
      concurrency: 8,
      perDomainConcurrency: 2,
      mxAddressLimit: 5,
      smarthost: null,
      mxPort: 25,
    });
    expect(config.metrics.listen).toBeNull();
  });

  it("reads every key; the password stays in its file until the worker starts", () => {
    const secret = writeFile(dir, "smarthost.secret", "hunter2 two\n");
    const file = configFile(`${BASE}
[outbound]
enabled = true
resolver = ["127.0.0.1:5353", "::1", "[::1]:53"]
retry_schedule_minutes = [1, 2.5, 60]
queue_lifetime_hours = 72
concurrency = 4
per_domain_concurrency = 1
mx_address_limit = 12
smarthost = "relay.example.net:587"
smarthost_tls = "implicit"
smarthost_tls_verify = true
smarthost_user = "mailroom"
smarthost_password_file = "smarthost.secret"
mx_port = 2526
[metrics]
listen = "127.0.0.1:9187"
`);
    const config = loadConfig({ file, env: {} });
    expect(config.outbound).toEqual({
      enabled: true,
      resolver: ["127.0.0.1:5353", "::1", "[::1]:53"],
      retrySchedule: [60_000, 150_000, 3_600_000],
      queueLifetimeHours: 72,
      concurrency: 4,
      perDomainConcurrency: 1,
      mxAddressLimit: 12,
      smarthost: { host: "relay.example.net", port: 587, tls: "implicit", verify: true, auth: { username: "mailroom", passwordFile: secret } },
      mxPort: 2526,
    });
    expect(JSON.stringify(config)).not.toContain("hunter2");
    expect(config.metrics.listen).toEqual({ host: "127.0.0.1", port: 9187 });
    expect(readSmarthostPassword(config)).toBe("hunter2 two");
    const options = outboundOptions(config, createMemoryStore(), { debug() {}, info() {}, warn() {}, error() {}, child() { return this; } });
    expect(options.smarthost).toEqual({ host: "relay.example.net", port: 587, tls: "implicit", verify: true, auth: { username: "mailroom", password: "hunter2 two" } });
    expect(options.resolver).toEqual({ servers: ["127.0.0.1:5353", "::1", "[::1]:53"] });
    expect(options.mxPort).toBe(2526);
    expect(options.queueLifetimeMs).toBe(72 * 3_600_000);
    expect(options.mxAddressLimit).toBe(12);
  });

  it("takes MAILROOM_OUTBOUND_* and MAILROOM_METRICS_* overrides", () => {
    const config = loadConfig({
      file: configFile(BASE),
      env: {
        MAILROOM_OUTBOUND_ENABLED: "false",
        MAILROOM_OUTBOUND_RESOLVER: "127.0.0.1:53, 10.0.0.1",
        MAILROOM_OUTBOUND_RETRY_SCHEDULE_MINUTES: "5, 0.5",
        MAILROOM_OUTBOUND_SMARTHOST: "smart.example.net:25",
        MAILROOM_OUTBOUND_SMARTHOST_TLS: "none",
        MAILROOM_METRICS_LISTEN: "[::1]:0",
      },
    });
    expect(config.outbound).toMatchObject({
      enabled: false,
      resolver: ["127.0.0.1:53", "10.0.0.1"],
      retrySchedule: [300_000, 30_000],
      smarthost: { host: "smart.example.net", port: 25, tls: "none", verify: false, auth: null },
    });
    expect(config.metrics.listen).toEqual({ host: "::1", port: 0 });
    expect(config.where("outbound.smarthost")).toBe("MAILROOM_OUTBOUND_SMARTHOST");
    expect(loadConfig({ file: configFile(BASE), env: { MAILROOM_METRICS_LISTEN: "" } }).metrics.listen).toBeNull();
  });

  it("says which file and key is wrong", () => {
    const check = (section: string, env: Record<string, string> = {}) => {
      const file = configFile(`${BASE}${section}`);
      return errorOf(() => loadConfig({ file, env })).replace(file, "FILE");
    };
    expect(check(`[outbound]\nresolver = ["dns.example.net:53"]\n`)).toBe(
      `FILE: outbound.resolver: "dns.example.net:53": a DNS server must be an IP address, not a name`,
    );
    expect(check(`[outbound]\nretry_schedule_minutes = [5, -1]\n`)).toBe(
      "FILE: outbound.retry_schedule_minutes: expected a list of positive numbers (minutes), got number -1 in it",
    );
    expect(check(`[outbound]\nsmarthost = "relay.example.net"\n`)).toBe(
      `FILE: outbound.smarthost: "relay.example.net" is not "host:port" (e.g. "0.0.0.0:25" or "[::]:25")`,
    );
    expect(check(`[outbound]\nsmarthost = "relay.example.net:587"\nsmarthost_tls = "tls"\n`)).toBe(
      `FILE: outbound.smarthost_tls: expected one of "starttls", "implicit", "none", got the string "tls"`,
    );
    expect(check(`[outbound]\nsmarthost = "relay.example.net:587"\nsmarthost_user = "me"\n`)).toBe(
      "FILE: outbound.smarthost_password_file: required together with outbound.smarthost_user",
    );
    expect(check(`[outbound]\nsmarthost = "relay.example.net:587"\nsmarthost_user = "me"\nsmarthost_password_file = "missing.secret"\n`)).toBe(
      `FILE: outbound.smarthost_password_file: cannot read ${join(dir, "missing.secret")}: no such file`,
    );
    writeFile(dir, "pw.secret", "hunter2\n");
    // The worker sends a password only over TLS: this pair could never deliver anything.
    expect(check(`[outbound]\nsmarthost = "relay.example.net:25"\nsmarthost_tls = "none"\nsmarthost_user = "me"\nsmarthost_password_file = "pw.secret"\n`)).toBe(
      `FILE: outbound.smarthost_tls: "none" cannot be used with outbound.smarthost_user (the password is sent only over TLS); use "starttls" or "implicit"`,
    );
    expect(check(`[outbound]\nsmarthost = "relay.example.net:25"\nsmarthost_tls = "none"\nsmarthost_tls_verify = true\n`)).toBe(
      `FILE: outbound.smarthost_tls_verify: there is no certificate to check with outbound.smarthost_tls = "none"`,
    );
    writeFile(dir, "empty.secret", "\n");
    expect(check(`[outbound]\nsmarthost = "relay.example.net:587"\nsmarthost_user = "me"\nsmarthost_password_file = "empty.secret"\n`)).toBe(
      `FILE: outbound.smarthost_password_file: ${join(dir, "empty.secret")} is empty; it should hold the smarthost password on its first line`,
    );
    expect(check(`[outbound]\nsmarthost_password = "hunter2"\n`)).toBe(
      "FILE: outbound.smarthost_password: unknown key (did you mean outbound.smarthost_password_file?)",
    );
    expect(check(`[outbound]\nretry_schedule_minutes = []\n`)).toBe(
      "FILE: outbound.retry_schedule_minutes: expected a non-empty list of positive numbers (minutes), got an array",
    );
    expect(check(`[outbound]\nconcurrency = 0\n`)).toBe("FILE: outbound.concurrency: must be at least 1, got 0");
    expect(check(`[outbound]\nmx_address_limit = 0\n`)).toBe("FILE: outbound.mx_address_limit: must be at least 1, got 0");
    expect(check(`[outbound]\nmx_address_limit = 101\n`)).toBe("FILE: outbound.mx_address_limit: must be at most 100, got 101");
    expect(check(`[outbound]\nmx_address_limit = 2.5\n`)).toBe("FILE: outbound.mx_address_limit: expected an integer, got number 2.5");
    expect(check("", { MAILROOM_OUTBOUND_MX_ADDRESS_LIMIT: "lots" })).toBe(
      'MAILROOM_OUTBOUND_MX_ADDRESS_LIMIT: expected an integer, got the string "lots"',
    );
    expect(check(`[metrics]\nlisten = "9187"\n`)).toBe(`FILE: metrics.listen: "9187" is not "host:port" (e.g. "0.0.0.0:25" or "[::]:25")`);
    expect(check("", { MAILROOM_OUTBOUND_MX_PORT: "none" })).toBe("MAILROOM_OUTBOUND_MX_PORT: expected an integer, got the string \"none\"");
    expect(check("", { MAILROOM_OUTBOUND_CONCURENCY: "3" })).toBe(
      "MAILROOM_OUTBOUND_CONCURENCY: no such setting (did you mean MAILROOM_OUTBOUND_CONCURRENCY?)",
    );
  });
});
