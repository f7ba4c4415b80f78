// Hostile config input: whatever bytes are in the file or the environment, loading either succeeds or
// throws one ConfigError whose message names the file (or variable). Never a crash of another kind,
// never a hang.
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/index.js";
import { cleanup, tempDir, writeFile } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const SEED = Number(process.env.HOSTILE_SEED ?? 20261127);
let n = 0;

function load(text: string | Uint8Array, env: Record<string, string> = {}): void {
  const file = writeFile(dir, `fuzz-${++n}.toml`, typeof text === "string" ? text : Buffer.from(text).toString("latin1"));
  try {
    loadConfig({ file, env, cwd: dir });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message.includes(file) || /MAILROOM_/.test(message)).toBe(true);
    expect(message).not.toMatch(/\n/);
  }
}

const keys = [
  "hostname", "store.url", "smtp.listen", "smtp.max_message_size", "smtp.max_recipients", "smtp.bare_line_endings",
  "pop3.listen", "pop3.expire_days", "pop3.idle_timeout_seconds", "tls.cert", "limits.max_connections", "log.level", "nope.key",
];
const tomlValue = fc.oneof(
  fc.string(),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.array(fc.string(), { maxLength: 3 }),
  fc.constantFrom("0.0.0.0:25", "[::1]:110", "host:99999", "maildir:./x", "postgres://h/db", "redis://h", "bogus:", "never", "-1"),
);
const render = (v: unknown): string => (typeof v === "string" ? JSON.stringify(v) : Array.isArray(v) ? `[${v.map(render).join(", ")}]` : String(v));

describe("config loader under hostile input", () => {
  it("random bytes in the file", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => load(bytes)), { seed: SEED, numRuns: 300 });
  });

  it("well-formed TOML with random keys and values of random types", () => {
    const assignment = fc.tuple(fc.constantFrom(...keys), tomlValue);
    fc.assert(
      fc.property(fc.array(assignment, { maxLength: 8 }), (pairs) => {
        const sections = new Map<string, string[]>();
        for (const [key, value] of pairs) {
          const [section, name] = key.includes(".") ? key.split(".") : ["", key];
          sections.set(section!, [...(sections.get(section!) ?? []), `${name} = ${render(value)}`]);
        }
        const text = [...sections].map(([s, lines]) => (s ? `[${s}]\n` : "") + [...new Set(lines)].join("\n")).join("\n");
        load(`${text}\n`);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("random environment overrides", () => {
    const names = fc.constantFrom("MAILROOM_HOSTNAME", "MAILROOM_SMTP_LISTEN", "MAILROOM_POP3_EXPIRE_DAYS", "MAILROOM_LIMITS_MAX_CONNECTIONS", "MAILROOM_STORE_URL", "MAILROOM_LOG_LEVEL", "MAILROOM_BOGUS_KEY");
    fc.assert(
      fc.property(fc.dictionary(names, fc.string({ maxLength: 40 }), { maxKeys: 4 }), (env) => load(`hostname = "mail.example.test"\n[store]\nurl = "memory:x"\n`, env)),
      { seed: SEED, numRuns: 300 },
    );
  });

  it("very long lines, NUL and invalid UTF-8", () => {
    load(`hostname = "${"a".repeat(200_000)}"\n`);
    load(`hostname = "mail\0.example"\n`);
    load(Uint8Array.from([0x68, 0x6f, 0x73, 0x74, 0x3d, 0x22, 0xff, 0xfe, 0x22, 0x0a]));
    load(`${"[a]\n".repeat(10_000)}`);
  });
});
