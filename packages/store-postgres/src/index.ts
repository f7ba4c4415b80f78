/**
 * @mailroom/store-postgres: the Mailroom store on PostgreSQL. Pick it in the server config with a
 * `postgres://` URL, or call createPostgresStore directly.
 */
import type { Store, StoreAdapter, StoreOptions } from "@mailroom/store";
import type { MigrationResult } from "./migrations.js";
import { OPTION_KEYS, parseAdapterOptions } from "./options.js";
import { createPostgresStore, migrate } from "./store.js";

export { createPostgresStore, migrate, type PostgresStoreOptions, type PostgresSslOptions } from "./store.js";
export { LATEST_VERSION, type MigrationResult } from "./migrations.js";
export { classifyPgError, toStoreError } from "./errors.js";
export { OPTION_KEYS, parseAdapterOptions } from "./options.js";

export interface PostgresAdapter extends StoreAdapter {
  /** Creates or upgrades the schema without opening a store (`mailroom migrate`). */
  migrate(url: string, options?: StoreOptions): Promise<MigrationResult>;
}

export const postgresAdapter: PostgresAdapter = {
  name: "postgres",
  schemes: ["postgres", "postgresql"],
  optionKeys: OPTION_KEYS,
  async open(url: string, options?: StoreOptions): Promise<Store> {
    return createPostgresStore(await parseAdapterOptions(url, options));
  },
  async migrate(url: string, options?: StoreOptions): Promise<MigrationResult> {
    return migrate(await parseAdapterOptions(url, options));
  },
};

export default postgresAdapter;
