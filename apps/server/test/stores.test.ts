/**
 * The server on the shared-store adapters, picked by URL scheme from the config: `mailroom migrate`,
 * the admin commands, and one SMTP → POP3 round trip each against the real PostgreSQL and Redis.
 * Unreachable services fail these tests (MAILROOM_SKIP_PG=1 / MAILROOM_SKIP_REDIS=1 skip them outside CI).
 */
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { connect } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { cleanup, python, runCli, serve, tempDir, writeFile } from "./helpers.js";

const PG_URL = process.env["MAILROOM_TEST_PG"] ?? "postgres://postgres@127.0.0.1:5432/postgres";
const REDIS_URL = process.env["MAILROOM_TEST_REDIS"] ?? "redis://127.0.0.1:6379";
const required = Boolean(process.env["CI"] || process.env["MAILROOM_REQUIRE_SERVICES"]);
const skipPg = process.env["MAILROOM_SKIP_PG"] === "1" && !required;
const skipRedis = process.env["MAILROOM_SKIP_REDIS"] === "1" && !required;

// The drivers belong to the adapter packages; borrow them from there for clean-up only.
const requireFrom = (pkg: string) => createRequire(createRequire(import.meta.url).resolve(`${pkg}/package.json`));

interface PgClient {
  connect(): Promise<void>;
  query(sql: string): Promise<unknown>;
  end(): Promise<void>;
}
interface RedisClient {
  connect(): Promise<void>;
  scan(cursor: string, ...args: Array<string | number>): Promise<[string, string[]]>;
  del(...keys: string[]): Promise<number>;
  quit(): Promise<unknown>;
}

const id = randomBytes(4).toString("hex");
const schema = `mr_server_${id}`;
const prefix = `mr-server-${id}:`;
const dir = tempDir();
const PASSWORD = "pw for stores";

afterAll(async () => {
  cleanup();
  if (!skipPg) {
    const pg = requireFrom("@mailroom/store-postgres")("pg") as { Client: new (options: { connectionString: string }) => PgClient };
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await client.end();
  }
  if (!skipRedis) {
    const { Redis } = requireFrom("@mailroom/store-redis")("ioredis") as {
      Redis: new (url: string, options: { lazyConnect: boolean; maxRetriesPerRequest: number }) => RedisClient;
    };
    const client = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await client.connect();
    let cursor = "0";
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
      cursor = next;
      if (keys.length > 0) await client.del(...keys);
    } while (cursor !== "0");
    await client.quit();
  }
});

function reachable(url: string, fallbackPort: number): Promise<void> {
  const parsed = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(parsed.port || fallbackPort), parsed.hostname || "127.0.0.1");
    socket.setTimeout(3000, () => socket.destroy(new Error("timed out")));
    socket.on("connect", () => {
      socket.end();
      resolve();
    });
    socket.on("error", (error) => reject(new Error(`${url} is not reachable (${error.message}); start the service (see README.md)`)));
  });
}

const SEND = `
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.example.net", timeout=10)
s.sendmail("sender@remote.test", [sys.argv[2]], sys.stdin.buffer.read())
s.quit()
`;
const FETCH = `
import poplib, sys, base64
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
p.user(sys.argv[2]); p.pass_(sys.argv[3])
lines = p.retr(1)[1]
p.quit()
print(base64.b64encode(b"\\r\\n".join(lines) + b"\\r\\n").decode())
`;

function storeConfig(name: string, storeSection: string): string {
  return writeFile(
    dir,
    `${name}.toml`,
    `hostname = "mail.example.test"
[store]
${storeSection}
[smtp]
listen = ["127.0.0.1:0"]
submission = []
submissions = []
[pop3]
listen = ["127.0.0.1:0"]
pop3s = []
[limits]
shutdown_timeout_seconds = 2
`,
  );
}

async function roundTrip(config: string): Promise<void> {
  const run = (args: string[], stdin?: string) => runCli([...args, "--config", config], stdin === undefined ? {} : { stdin });
  expect(await run(["domain", "add", "example.test"])).toMatchObject({ code: 0 });
  expect(await run(["user", "add", "bob@example.test", "--password-stdin"], `${PASSWORD}\n`)).toMatchObject({ code: 0 });
  expect((await run(["user", "list"])).stdout).toBe("bob@example.test\n");

  const server = await serve(config, { cwd: dir });
  const body = Buffer.from("Subject: via a shared store\r\n\r\n.dot line\r\nbody\r\n");
  await python(SEND, [String(server.port("smtp")), "bob@example.test"], body.toString("latin1"));
  const got = Buffer.from(await python(FETCH, [String(server.port("pop3")), "bob@example.test", PASSWORD]), "base64");
  expect(got.subarray(got.length - body.length).equals(body)).toBe(true);

  server.child.kill("SIGTERM");
  expect(await server.exited).toBe(0);
}

describe.skipIf(skipPg)("on PostgreSQL", () => {
  const config = storeConfig("pg", `url = ${JSON.stringify(PG_URL)}\nschema = "${schema}"`);

  it("migrates once, then says it is up to date", async () => {
    await reachable(PG_URL, 5432);
    const first = await runCli(["migrate", "--config", config]);
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/^applied migrations? [\d, ]+; the postgres schema is at version \d+\n$/);
    const second = await runCli(["migrate", "--config", config]);
    expect(second.stdout).toMatch(/^the postgres schema is up to date \(version \d+\)\n$/);
  });

  it("serves mail stored in PostgreSQL", async () => {
    await roundTrip(config);
  });
});

describe.skipIf(skipRedis)("on Redis", () => {
  const config = storeConfig("redis", `url = ${JSON.stringify(REDIS_URL)}\nprefix = "${prefix}"`);

  it("has nothing to migrate", async () => {
    await reachable(REDIS_URL, 6379);
    expect((await runCli(["migrate", "--config", config])).stdout).toBe("nothing to do: the redis store has no schema to migrate\n");
  });

  it("serves mail stored in Redis", async () => {
    await roundTrip(config);
  });
});
