import { StoreError } from "@mailroom/store";

/**
 * A schema name is the one identifier that has to be spliced into SQL text (identifiers cannot be
 * query parameters), so it is held to a strict pattern and always quoted.
 */
const SCHEMA_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export const DEFAULT_SCHEMA = "mailroom";

export function assertSchemaName(name: string): void {
  if (!SCHEMA_NAME.test(name) || name.toLowerCase().startsWith("pg_")) {
    throw new StoreError(
      "invalid-name",
      `postgres: invalid schema name ${JSON.stringify(name)}: use 1–63 letters, digits and underscores, not starting with a digit or pg_`,
    );
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Millisecond timestamps go in and out as exact integers (interval arithmetic, no float rounding). */
export const msToTs = (param: string): string => `(timestamptz 'epoch' + ${param}::bigint * interval '1 millisecond')`;
export const tsToMs = (column: string): string => `floor(extract(epoch from ${column}) * 1000)::float8`;
/** A millisecond time as the text parameter msToTs expects (null stays null). */
export const msParam = (t: number | null | undefined): string | null => (t === undefined || t === null ? null : String(Math.round(t)));
