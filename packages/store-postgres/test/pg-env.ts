/**
 * Shared by every test file: where the test database is, and what to do when it is not there.
 * An unreachable database fails the run (silently skipped integration tests hide breakage) unless
 * MAILROOM_SKIP_PG=1 is set outside CI.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";

export const PG_URL = process.env["MAILROOM_TEST_PG"] ?? "postgres://postgres@127.0.0.1:5432/postgres";

const required = Boolean(process.env["CI"] || process.env["MAILROOM_REQUIRE_SERVICES"]);
const skipAllowed = process.env["MAILROOM_SKIP_PG"] === "1" && !required;

/** A database just started by CI may need a moment: retry the first connect for a few seconds. */
async function reachable(deadlineMs: number): Promise<unknown> {
  const until = Date.now() + deadlineMs;
  let lastError: unknown;
  for (;;) {
    const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 2000 });
    client.on("error", () => undefined);
    try {
      await client.connect();
      await client.query("SELECT 1");
      return undefined;
    } catch (error) {
      lastError = error;
    } finally {
      await client.end().catch(() => undefined);
    }
    if (Date.now() >= until) return lastError;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

let checked: Promise<boolean> | undefined;

/**
 * Resolves true when PostgreSQL answers, false when it does not and skipping is allowed; throws a
 * clear message otherwise.
 */
export function postgresAvailable(): Promise<boolean> {
  checked ??= reachable(5000).then((error) => {
    if (error === undefined) return true;
    const why = error instanceof Error ? error.message : String(error);
    if (skipAllowed) {
      console.warn(`store-postgres tests skipped: PostgreSQL at ${PG_URL} unreachable (${why})`);
      return false;
    }
    throw new Error(
      `PostgreSQL at ${PG_URL} is unreachable (${why}). Start it (pg_ctlcluster 15 main start) or point ` +
        `MAILROOM_TEST_PG at one${required ? "" : "; set MAILROOM_SKIP_PG=1 to skip these tests locally"}.`,
    );
  });
  return checked;
}

/** A schema name no other test run uses. */
export function uniqueSchema(label: string): string {
  return `mr_${label}_${randomBytes(5).toString("hex")}`;
}

/** Drops schemas made by a test, through a short-lived connection of its own. */
export async function dropSchemas(...schemas: string[]): Promise<void> {
  const client = new pg.Client({ connectionString: PG_URL });
  client.on("error", () => undefined);
  await client.connect();
  try {
    for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

/** One-off query outside any store (for checks a store's API cannot express). */
export async function adminQuery<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: PG_URL });
  client.on("error", () => undefined);
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}
