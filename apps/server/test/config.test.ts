import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/index.js";
import { cleanup, opensslCertificate, tempDir, writeFile, errorOf } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const { cert, key } = opensslCertificate(dir);

const BASE = `hostname = "mail.example.test"
[store]
url = "maildir:./mail"
[tls]
cert = ${JSON.stringify(cert)}
key = ${JSON.stringify(key)}
`;

let n = 0;
function configFile(text: string): string {
  return writeFile(dir, `config-${++n}.toml`, text);
}

describe("config file", () => {
  it("fills defaults, resolves relative paths against the config file's directory", () => {
    const file = configFile(BASE);
    const config = loadConfig({ file, env: {} });
    expect(config.development).toBe(false);
    expect(config.hostname).toBe("mail.example.test");
    expect(config.store.url).toBe(`maildir:${join(dir, "mail")}`);
    expect(config.smtp.listen).toEqual([{ host: "0.0.0.0", port: 25 }]);
    expect(config.smtp.submission).toEqual([{ host: "0.0.0.0", port: 587 }]);
    expect(config.smtp.submissions).toEqual([{ host: "0.0.0.0", port: 465 }]);
    expect(config.pop3.listen).toEqual([{ host: "0.0.0.0", port: 110 }]);
    expect(config.pop3.pop3s).toEqual([{ host: "0.0.0.0", port: 995 }]);
    expect(config.pop3.expireDays).toBeNull();
    expect(config.smtp.maxMessageSize).toBe(26_214_400);
    expect(config.limits.shutdownTimeoutSeconds).toBe(10);
    expect(config.smtp.maxSessionSeconds).toBe(1800);
    expect(config.pop3.loginTimeoutSeconds).toBe(180);
    expect(config.log.level).toBe("info");
    expect(config.tls).toEqual({ cert, key });
    expect(config.auth).toEqual({ cacheSeconds: 900 });
  });

  it("reads every section", () => {
    const file = configFile(`${BASE}
[smtp]
listen = ["127.0.0.1:2525", "[::1]:2525"]
submission = []
submissions = []
max_message_size = 1048576
max_recipients = 5
allow_loopback_plaintext_auth = true
bare_line_endings = "normalize"
max_session_seconds = 0
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
allow_plaintext_auth = true
expire_days = 30
idle_timeout_seconds = 900
login_timeout_seconds = 60
lease_ttl_seconds = 20
[auth]
cache_seconds = 0
[limits]
max_connections = 50
max_connections_per_address = 5
shutdown_timeout_seconds = 3
[log]
level = "debug"
`);
    const config = loadConfig({ file, env: {} });
    expect(config.smtp).toMatchObject({
      listen: [
        { host: "127.0.0.1", port: 2525 },
        { host: "::1", port: 2525 },
      ],
      submission: [],
      maxMessageSize: 1_048_576,
      maxRecipients: 5,
      allowLoopbackPlaintextAuth: true,
      bareLineEndings: "normalize",
      maxSessionSeconds: 0,
    });
    expect(config.pop3).toMatchObject({ expireDays: 30, idleTimeoutSeconds: 900, loginTimeoutSeconds: 60, leaseTtlSeconds: 20, allowPlaintextAuth: true });
    expect(config.limits).toEqual({ maxConnections: 50, maxConnectionsPerAddress: 5, shutdownTimeoutSeconds: 3 });
    expect(config.log.level).toBe("debug");
    expect(config.auth).toEqual({ cacheSeconds: 0 });
  });

  it("passes unknown [store] keys on as adapter options", () => {
    const file = configFile(BASE.replace('url = "maildir:./mail"', 'url = "postgres://127.0.0.1/mail"\nschema = "mailroom"\npool_size = 4'));
    const config = loadConfig({ file, env: {} });
    expect(config.store.url).toBe("postgres://127.0.0.1/mail");
    expect(config.store.options).toEqual({ schema: "mailroom", pool_size: 4 });
  });

  // Every error names the file and the key, and says what is wrong.
  const cases: Array<[string, string, RegExp]> = [
    ["unknown key with a suggestion", `${BASE}[smtp]\nlisten_on = ["127.0.0.1:25"]\n`, /smtp\.listen_on: unknown key \(did you mean smtp\.listen\?\)/],
    ["unknown section", `${BASE}[pop]\nlisten = []\n`, /\[pop\]: unknown section \(did you mean \[pop3\]\?\)/],
    ["unknown top-level key", `hostnme = "x"\n${BASE}`, /hostnme: unknown key \(did you mean hostname\?\)/],
    ["wrong type", `${BASE}[smtp]\nmax_recipients = "ten"\n`, /smtp\.max_recipients: expected an integer, got the string "ten"/],
    ["integer out of range", `${BASE}[smtp]\nmax_recipients = 0\n`, /smtp\.max_recipients: must be at least 1, got 0/],
    ["negative time limit", `${BASE}[pop3]\nlogin_timeout_seconds = -1\n`, /pop3\.login_timeout_seconds: must be at least 0, got -1/],
    // A timer over 2^31 - 1 ms fires at once: "a month" would end every session as soon as it began.
    ["time limit past what a timer holds", `${BASE}[smtp]\nmax_session_seconds = 2592000\n`, /smtp\.max_session_seconds: must be at most 2147483, got 2592000/],
    ["lease past what a timer holds", `${BASE}[pop3]\nlease_ttl_seconds = 3000000\n`, /pop3\.lease_ttl_seconds: must be at most 2147483, got 3000000/],
    ["bad host:port", `${BASE}[pop3]\nlisten = ["110"]\n`, /pop3\.listen: "110" is not "host:port"/],
    ["port out of range", `${BASE}[pop3]\nlisten = ["127.0.0.1:70000"]\n`, /pop3\.listen: "127\.0\.0\.1:70000": port 70000 is out of range/],
    ["listen not a list of strings", `${BASE}[smtp]\nlisten = [25]\n`, /smtp\.listen: expected "host:port" strings, got number 25/],
    ["boolean as string", `${BASE}[pop3]\nallow_plaintext_auth = "yes"\n`, /pop3\.allow_plaintext_auth: expected true or false/],
    ["enum", `${BASE}[smtp]\nbare_line_endings = "normalise"\n`, /smtp\.bare_line_endings: expected one of "reject", "normalize".*did you mean "normalize"/],
    ["expire_days", `${BASE}[pop3]\nexpire_days = "soon"\n`, /pop3\.expire_days: expected "never" or a number of days/],
    ["log level", `${BASE}[log]\nlevel = "verbose"\n`, /log\.level: expected one of/],
    ["workers", `${BASE}[server]\nworkers = "many"\n`, /server\.workers: expected "auto" or a number of processes, got the string "many"/],
    ["no workers", `${BASE}[server]\nworkers = 0\n`, /server\.workers: must be at least 1, got 0/],
    ["auth cache too long", `${BASE}[auth]\ncache_seconds = 100000\n`, /auth\.cache_seconds: must be at most 86400, got 100000/],
    ["store URL without scheme", BASE.replace('"maildir:./mail"', '"./mail"'), /store\.url: "\.\/mail" is not a store URL/],
    ["missing store URL", BASE.replace('url = "maildir:./mail"', ""), /store\.url: required/],
    ["missing hostname", BASE.replace('hostname = "mail.example.test"', ""), /hostname: required/],
    ["bad hostname", BASE.replace("mail.example.test", "mail example"), /hostname: "mail example" is not a host name/],
    ["hostname with an empty label", BASE.replace("mail.example.test", "mail..example.test"), /hostname: "mail\.\.example\.test" is not a host name/],
    ["hostname label over 63", BASE.replace("mail.example.test", `${"a".repeat(64)}.example.test`), /hostname: "a{64}\.example\.test" is not a host name/],
    ["hostname label ending in a hyphen", BASE.replace("mail.example.test", "mail-.example.test"), /hostname: "mail-\.example\.test" is not a host name/],
    ["IP address as hostname", BASE.replace("mail.example.test", "192.0.2.7"), /hostname: "192\.0\.2\.7" is not a host name .*not an IP address/],
    ["unreadable cert", BASE.replace(JSON.stringify(cert), JSON.stringify(join(dir, "missing.pem"))), /tls\.cert: cannot read .*missing\.pem: no such file/],
    ["key without cert", BASE.replace(/cert = .*\n/, ""), /tls\.cert: required together with tls\.key/],
    ["implicit TLS without [tls]", BASE.replace(/\[tls\][\s\S]*$/, ""), /smtp\.submissions: implicit TLS listeners need \[tls\]/],
    ["section as a value", `smtp = 5\n${BASE}`, /smtp: expected a \[smtp\] section, got number 5/],
    ["not TOML", `${BASE}[smtp\n`, /not valid TOML: line \d+, column \d+/],
  ];
  it.each(cases)("rejects: %s", (_name, text, pattern) => {
    const file = configFile(text);
    const message = errorOf(() => loadConfig({ file, env: {} }));
    expect(message.startsWith(`${file}: `)).toBe(true);
    expect(message).toMatch(pattern);
    expect(message).not.toContain("\n");
  });

  it("runs one process unless [server] workers says more; auto means one per CPU", async () => {
    expect(loadConfig({ file: configFile(BASE), env: {} }).server.workers).toBe(1);
    expect(loadConfig({ file: configFile(`${BASE}[server]\nworkers = 3\n`), env: {} }).server.workers).toBe(3);
    const { availableParallelism } = await import("node:os");
    expect(loadConfig({ file: configFile(`${BASE}[server]\nworkers = "auto"\n`), env: {} }).server.workers).toBe(availableParallelism());
    expect(loadConfig({ file: configFile(BASE), env: { MAILROOM_SERVER_WORKERS: "2" } }).server.workers).toBe(2);
  });

  it("names a missing config file", () => {
    const file = join(dir, "nope.toml");
    expect(errorOf(() => loadConfig({ file, env: {} }))).toBe(`${file}: cannot read the config file: no such file`);
  });
});

describe("environment overrides", () => {
  it("override keys, typed like the key", () => {
    const file = configFile(BASE);
    const config = loadConfig({
      file,
      cwd: "/srv",
      env: {
        MAILROOM_HOSTNAME: "mx.example.test",
        MAILROOM_STORE_URL: "maildir:spool",
        MAILROOM_SMTP_LISTEN: "127.0.0.1:2525, 127.0.0.1:2526",
        MAILROOM_SMTP_SUBMISSIONS: "",
        MAILROOM_SMTP_MAX_RECIPIENTS: "7",
        MAILROOM_POP3_ALLOW_PLAINTEXT_AUTH: "true",
        MAILROOM_POP3_EXPIRE_DAYS: "14",
        MAILROOM_LOG_LEVEL: "warn",
        MAILROOM_AUTH_CACHE_SECONDS: "60",
        MAILROOM_STORE_POOL_SIZE: "3",
        MAILROOM_TEST_PG: "ignored: not ours",
      },
    });
    expect(config.hostname).toBe("mx.example.test");
    expect(config.store.url).toBe("maildir:/srv/spool");
    expect(config.smtp.listen).toEqual([
      { host: "127.0.0.1", port: 2525 },
      { host: "127.0.0.1", port: 2526 },
    ]);
    expect(config.smtp.submissions).toEqual([]);
    expect(config.smtp.maxRecipients).toBe(7);
    expect(config.pop3.allowPlaintextAuth).toBe(true);
    expect(config.pop3.expireDays).toBe(14);
    expect(config.log.level).toBe("warn");
    expect(config.auth.cacheSeconds).toBe(60);
    expect(config.store.options).toEqual({ pool_size: 3 });
    expect(config.where("smtp.listen")).toBe("MAILROOM_SMTP_LISTEN");
  });

  it.each([
    ["MAILROOM_SMTP_MAX_RECIPIENTS", "lots", /^MAILROOM_SMTP_MAX_RECIPIENTS: expected an integer/],
    ["MAILROOM_POP3_LISTEN", "localhost", /^MAILROOM_POP3_LISTEN: "localhost" is not "host:port"/],
    ["MAILROOM_POP3_ALLOW_PLAINTEXT_AUTH", "maybe", /^MAILROOM_POP3_ALLOW_PLAINTEXT_AUTH: expected true or false/],
    ["MAILROOM_SMTP_LISTN", "127.0.0.1:25", /^MAILROOM_SMTP_LISTN: no such setting \(did you mean MAILROOM_SMTP_LISTEN\?\)/],
    ["MAILROOM_STORE_URL", "nothing", /^MAILROOM_STORE_URL: "nothing" is not a store URL/],
    ["MAILROOM_AUTH_CACHE_SECONDS", "-5", /^MAILROOM_AUTH_CACHE_SECONDS: must be at least 0, got -5/],
  ])("names the variable: %s=%s", (variable, value, pattern) => {
    const file = configFile(BASE);
    expect(errorOf(() => loadConfig({ file, env: { [variable]: value } }))).toMatch(pattern);
  });
});

describe("development setup", () => {
  it("is used without a file: loopback, high ports, ./data, localhost", () => {
    const config = loadConfig({ env: {}, cwd: "/home/dev/mailroom" });
    expect(config.development).toBe(true);
    expect(config.hostname).toBe("localhost");
    expect(config.store.url).toBe("maildir:/home/dev/mailroom/data");
    expect(config.dataDir).toBe("/home/dev/mailroom/data");
    expect(config.smtp.listen).toEqual([{ host: "127.0.0.1", port: 2525 }]);
    expect(config.smtp.submission).toEqual([{ host: "127.0.0.1", port: 2587 }]);
    expect(config.smtp.submissions).toEqual([{ host: "127.0.0.1", port: 2465 }]);
    expect(config.pop3.listen).toEqual([{ host: "127.0.0.1", port: 2110 }]);
    expect(config.pop3.pop3s).toEqual([{ host: "127.0.0.1", port: 2995 }]);
    expect(config.tls).toBeNull();
  });

  it("takes environment overrides too", () => {
    const config = loadConfig({ env: { MAILROOM_STORE_URL: "memory:dev", MAILROOM_POP3_LISTEN: "127.0.0.1:0" }, cwd: "/x" });
    expect(config.store.url).toBe("memory:dev");
    expect(config.pop3.listen).toEqual([{ host: "127.0.0.1", port: 0 }]);
  });
});
