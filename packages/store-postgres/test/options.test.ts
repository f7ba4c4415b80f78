import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import postgresAdapter, { parseAdapterOptions } from "../src/index.js";

const URL = "postgres://mail@db.internal/mail";

describe("adapter options from the config file", () => {
  it("describes itself to the server", () => {
    expect(postgresAdapter.name).toBe("postgres");
    expect(postgresAdapter.schemes).toEqual(["postgres", "postgresql"]);
    expect(postgresAdapter.optionKeys).toEqual(expect.arrayContaining(["schema", "pool_size", "statement_timeout_ms", "ssl", "ssl_ca"]));
  });

  it("maps snake_case keys onto store options", async () => {
    expect(
      await parseAdapterOptions(URL, {
        schema: "mail",
        pool_size: 20,
        statement_timeout_ms: 0,
        query_timeout_ms: 45_000,
        migrate: false,
        application_name: "mx-1",
        prepared_statements: false,
        ssl: true,
      }),
    ).toEqual({
      url: URL,
      schema: "mail",
      poolSize: 20,
      statementTimeoutMs: 0,
      queryTimeoutMs: 45_000,
      migrate: false,
      applicationName: "mx-1",
      preparedStatements: false,
      ssl: true,
    });
    expect(await parseAdapterOptions(URL, { pool_size: 5n })).toMatchObject({ poolSize: 5 });
  });

  it("reads ssl_ca from a file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mailroom-pg-"));
    try {
      const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
      await writeFile(join(dir, "ca.pem"), pem);
      expect(await parseAdapterOptions(URL, { ssl_ca: join(dir, "ca.pem") })).toEqual({ url: URL, ssl: { ca: pem } });
      await expect(parseAdapterOptions(URL, { ssl_ca: join(dir, "missing.pem") })).rejects.toThrow(/"ssl_ca": cannot read/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.each([
    [{ pool_size: "10" }, /"pool_size" must be an integer from 1 to 1000 \(got "10"\)/],
    [{ pool_size: 0 }, /"pool_size"/],
    [{ pool_size: 2.5 }, /"pool_size"/],
    [{ statement_timeout_ms: -1 }, /"statement_timeout_ms"/],
    [{ query_timeout_ms: 1.5 }, /"query_timeout_ms"/],
    [{ ssl: "yes" }, /"ssl" must be true or false/],
    [{ migrate: 1 }, /"migrate"/],
    [{ schema: 42 }, /"schema" must be a non-empty string/],
    [{ ssl: false, ssl_ca: "/etc/ca.pem" }, /"ssl" is false/],
    [{ poolsize: 3 }, /"poolsize" is unknown/],
  ])("rejects %o naming the key", async (options, message) => {
    await expect(parseAdapterOptions(URL, options)).rejects.toThrow(message);
  });
});
