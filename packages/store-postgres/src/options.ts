import { readFile } from "node:fs/promises";
import type { StoreOptions } from "@mailroom/store";
import type { PostgresSslOptions, PostgresStoreOptions } from "./store.js";

/** Keys accepted in the server's `[store]` section for a postgres:// URL. */
export const OPTION_KEYS = [
  "schema",
  "pool_size",
  "statement_timeout_ms",
  "query_timeout_ms",
  "connect_timeout_ms",
  "ssl",
  "ssl_ca",
  "ssl_reject_unauthorized",
  "migrate",
  "application_name",
  "prepared_statements",
] as const;

type OptionKey = (typeof OPTION_KEYS)[number];

function fail(key: string, expected: string, value: unknown): never {
  throw new Error(`postgres store option "${key}" must be ${expected} (got ${JSON.stringify(value)})`);
}

function integer(key: OptionKey, value: unknown, min: number, max: number): number {
  // TOML integers may arrive as bigint from some parsers.
  const n = typeof value === "bigint" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) {
    fail(key, `an integer from ${min} to ${max}`, typeof value === "bigint" ? value.toString() : value);
  }
  return n;
}

function boolean(key: OptionKey, value: unknown): boolean {
  if (typeof value !== "boolean") fail(key, "true or false", value);
  return value;
}

function string(key: OptionKey, value: unknown): string {
  if (typeof value !== "string" || value.length === 0) fail(key, "a non-empty string", value);
  return value;
}

/**
 * Turns config-file options into store options, checking every type: a typo in the config must stop
 * the server with a message that names the key, not surface later as an odd driver error.
 * `ssl_ca` is a path to a PEM file (or PEM text itself).
 */
export async function parseAdapterOptions(url: string, options: StoreOptions = {}): Promise<PostgresStoreOptions> {
  const known: ReadonlySet<string> = new Set(OPTION_KEYS);
  for (const key of Object.keys(options)) {
    if (!known.has(key)) throw new Error(`postgres store option "${key}" is unknown; known: ${OPTION_KEYS.join(", ")}`);
  }
  const out: { -readonly [K in keyof PostgresStoreOptions]: PostgresStoreOptions[K] } = { url };
  const o = options as Partial<Record<OptionKey, unknown>>;
  if (o.schema !== undefined) out.schema = string("schema", o.schema);
  if (o.pool_size !== undefined) out.poolSize = integer("pool_size", o.pool_size, 1, 1000);
  if (o.statement_timeout_ms !== undefined) {
    out.statementTimeoutMs = integer("statement_timeout_ms", o.statement_timeout_ms, 0, 2_147_483_647);
  }
  if (o.query_timeout_ms !== undefined) {
    out.queryTimeoutMs = integer("query_timeout_ms", o.query_timeout_ms, 0, 2_147_483_647);
  }
  if (o.connect_timeout_ms !== undefined) {
    out.connectTimeoutMs = integer("connect_timeout_ms", o.connect_timeout_ms, 1, 2_147_483_647);
  }
  if (o.migrate !== undefined) out.migrate = boolean("migrate", o.migrate);
  if (o.application_name !== undefined) out.applicationName = string("application_name", o.application_name);
  if (o.prepared_statements !== undefined) out.preparedStatements = boolean("prepared_statements", o.prepared_statements);

  const ssl = o.ssl === undefined ? undefined : boolean("ssl", o.ssl);
  const caSetting = o.ssl_ca === undefined ? undefined : string("ssl_ca", o.ssl_ca);
  const reject =
    o.ssl_reject_unauthorized === undefined ? undefined : boolean("ssl_reject_unauthorized", o.ssl_reject_unauthorized);
  if (ssl === false && (caSetting !== undefined || reject !== undefined)) {
    throw new Error(`postgres store option "ssl" is false, but "ssl_ca" or "ssl_reject_unauthorized" is set`);
  }
  if (caSetting !== undefined || reject !== undefined) {
    let ca: string | undefined;
    if (caSetting !== undefined) {
      if (caSetting.includes("-----BEGIN")) ca = caSetting;
      else {
        try {
          ca = await readFile(caSetting, "utf8");
        } catch (error) {
          const why = error instanceof Error ? error.message : String(error);
          throw new Error(`postgres store option "ssl_ca": cannot read ${caSetting}: ${why}`);
        }
      }
    }
    const tls: { -readonly [K in keyof PostgresSslOptions]: PostgresSslOptions[K] } = {};
    if (ca !== undefined) tls.ca = ca;
    if (reject !== undefined) tls.rejectUnauthorized = reject;
    out.ssl = tls;
  } else if (ssl !== undefined) {
    out.ssl = ssl;
  }
  return out;
}
