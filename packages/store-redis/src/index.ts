import type { Store, StoreAdapter, StoreOptions } from "@mailroom/store";
import { createRedisStore, resolveOptions, type RedisStoreOptions } from "./store.js";

export { createRedisStore, type RedisClusterOptions, type RedisStoreOptions } from "./store.js";
export { toStoreError } from "./errors.js";
export { escapeKeyPart } from "./keys.js";
export { DEFAULT_COMMAND_TIMEOUT_MS, connectionOptions } from "./connection.js";

/**
 * `[store]` keys (snake_case, so that MAILROOM_STORE_* environment variables can set them too) and the
 * createRedisStore option each one sets.
 */
const OPTION_MAP = {
  prefix: "prefix",
  chunk_bytes: "chunkBytes",
  connection_name: "connectionName",
  connect_timeout_ms: "connectTimeoutMs",
  command_timeout_ms: "commandTimeoutMs",
  wait_replicas: "waitReplicas",
  wait_timeout_ms: "waitTimeoutMs",
  staging_ttl_ms: "stagingTtlMs",
  cluster_nodes: "cluster",
} as const satisfies Record<string, keyof RedisStoreOptions>;

type OptionKey = keyof typeof OPTION_MAP;

const CONFIG_NAME = new Map<string, string>(Object.entries(OPTION_MAP).map(([config, option]) => [option, config]));

/** Turns `[store]` options into createRedisStore options; their types are checked there. */
export function fromConfig(options: StoreOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options)) {
    if (!Object.hasOwn(OPTION_MAP, key)) throw new Error(`redis store: unknown option "${key}"`);
    if (key === "cluster_nodes") {
      // A list in TOML; from an environment variable a comma-separated string.
      const nodes = typeof value === "string" ? value.split(",").map((n) => n.trim()).filter((n) => n !== "") : value;
      out["cluster"] = { nodes };
      continue;
    }
    // Some TOML parsers hand integers over as bigint.
    out[OPTION_MAP[key as OptionKey]] = typeof value === "bigint" ? Number(value) : value;
  }
  return out;
}

/** `redis://` and `rediss://` (TLS) URLs. */
export const redisAdapter: StoreAdapter = {
  name: "redis",
  schemes: ["redis", "rediss"],
  optionKeys: Object.keys(OPTION_MAP),
  async open(url: string, options: StoreOptions = {}): Promise<Store> {
    const mapped = { ...(fromConfig(options) as RedisStoreOptions), url };
    // Validate first so that a bad value is reported under its config key, not the code option name.
    resolveOptions(mapped, (key) => CONFIG_NAME.get(key) ?? key);
    return createRedisStore(mapped);
  },
};

export default redisAdapter;
