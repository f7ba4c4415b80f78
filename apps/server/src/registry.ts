/**
 * Picks the store adapter by the URL's scheme. Built-in adapters are imported only when their scheme
 * is used, so a Maildir installation never loads the PostgreSQL or Redis drivers. Packages named in
 * `store.adapter_modules` plug in further schemes (and may replace a built-in one).
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { isStoreError, type Store, type StoreAdapter } from "@mailroom/store";
import { ConfigError, closest } from "./errors.js";
import type { ServerConfig } from "./config.js";

type Loader = () => Promise<unknown>;

const BUILT_IN: Readonly<Record<string, Loader>> = {
  memory: () => import("@mailroom/store/memory") as Promise<unknown>,
  maildir: () => import("@mailroom/store-fs") as Promise<unknown>,
  postgres: () => import("@mailroom/store-postgres") as Promise<unknown>,
  postgresql: () => import("@mailroom/store-postgres") as Promise<unknown>,
  redis: () => import("@mailroom/store-redis") as Promise<unknown>,
  rediss: () => import("@mailroom/store-redis") as Promise<unknown>,
};

/** True if `value` has the shape of a StoreAdapter (a module's default export). */
export function isStoreAdapter(value: unknown): value is StoreAdapter {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Partial<StoreAdapter>;
  return (
    typeof v.name === "string" &&
    Array.isArray(v.schemes) &&
    v.schemes.every((s) => typeof s === "string") &&
    typeof v.open === "function" &&
    (v.optionKeys === undefined || (Array.isArray(v.optionKeys) && v.optionKeys.every((k) => typeof k === "string")))
  );
}

export function schemeOf(url: string): string {
  return url.slice(0, url.indexOf(":")).toLowerCase();
}

export interface AdapterRegistry {
  /** Every scheme that can be used, built-in and from modules. */
  readonly schemes: readonly string[];
  /** The adapter for a URL; ConfigError if no adapter claims its scheme. */
  adapterFor(url: string): Promise<StoreAdapter>;
}

export interface RegistryOptions {
  /** Package names or paths whose default export is a StoreAdapter. */
  readonly adapterModules?: readonly string[];
  /** Relative module paths and packages not installed next to the server are looked up from here. */
  readonly baseDir?: string;
  /** Names the config key in messages. */
  readonly where?: (key: string) => string;
}

async function importModule(name: string, baseDir: string): Promise<unknown> {
  if (name.startsWith(".") || isAbsolute(name)) return import(pathToFileURL(resolve(baseDir, name)).href);
  try {
    return await import(name);
  } catch (error) {
    if ((error as { code?: unknown }).code !== "ERR_MODULE_NOT_FOUND") throw error;
    // Not installed next to the server: try where the config file lives (a site's own node_modules).
    return import(pathToFileURL(resolveFrom(name, baseDir)).href);
  }
}

/**
 * Where `import(name)` would find a package if it were imported from `baseDir`. `require.resolve`
 * does that for packages with a "require" or "default" export; one that exports only for "import"
 * (an ESM-only adapter) is looked up by hand: its `node_modules` folder, then its export of ".".
 */
function resolveFrom(name: string, baseDir: string): string {
  const require = createRequire(join(baseDir, "mailroom-config.js"));
  try {
    return require.resolve(name);
  } catch (error) {
    // "pkg", "pkg/sub", "@scope/pkg", "@scope/pkg/sub": the package, then the export it asks for.
    const parts = name.split("/");
    const packageName = parts.slice(0, name.startsWith("@") ? 2 : 1).join("/");
    const subpath = ["."].concat(parts.slice(name.startsWith("@") ? 2 : 1)).join("/");
    const found = (require.resolve.paths(packageName) ?? [])
      .map((dir) => join(dir, packageName, "package.json"))
      .find((path) => existsSync(path));
    if (found === undefined) throw error;
    const manifest = JSON.parse(readFileSync(found, "utf8")) as { exports?: unknown };
    const target = importTarget(manifest.exports, subpath);
    // Only targets inside the package, as Node allows.
    if (target === null || !target.startsWith("./") || target.split("/").includes("..")) throw error;
    return join(dirname(found), target);
  }
}

/** The file an ESM `import` of a package's `subpath` ("." for its root) takes from its `exports`, or null. */
function importTarget(exports: unknown, subpath: string): string | null {
  if (typeof exports === "string") return subpath === "." ? exports : null;
  if (typeof exports !== "object" || exports === null) return null;
  const map = exports as Record<string, unknown>;
  const keyed = Object.keys(map).some((key) => key.startsWith("."));
  if (!keyed && subpath !== ".") return null;
  return conditionTarget(keyed ? map[subpath] : map);
}

function conditionTarget(entry: unknown): string | null {
  if (typeof entry === "string") return entry;
  if (typeof entry !== "object" || entry === null) return null;
  for (const condition of ["node", "import", "default"]) {
    const target = conditionTarget((entry as Record<string, unknown>)[condition]);
    if (target !== null) return target;
  }
  return null;
}

export async function createRegistry(options: RegistryOptions = {}): Promise<AdapterRegistry> {
  const where = options.where ?? ((key: string) => key);
  const baseDir = options.baseDir ?? process.cwd();
  const fromModules = new Map<string, StoreAdapter>();
  for (const name of options.adapterModules ?? []) {
    let module: unknown;
    try {
      module = await importModule(name, baseDir);
    } catch (error) {
      throw new ConfigError(`${where("store.adapter_modules")}: cannot load ${JSON.stringify(name)}: ${firstLine(error)}`);
    }
    // A TypeScript adapter compiled to CommonJS arrives as { default: { default: adapter } }.
    const exported = (module as { default?: unknown }).default;
    const adapter = isStoreAdapter(exported) ? exported : (exported as { default?: unknown } | undefined)?.default;
    if (!isStoreAdapter(adapter)) {
      throw new ConfigError(`${where("store.adapter_modules")}: ${JSON.stringify(name)} has no StoreAdapter as its default export`);
    }
    for (const scheme of adapter.schemes) fromModules.set(scheme.toLowerCase(), adapter);
  }
  const schemes = [...new Set([...Object.keys(BUILT_IN), ...fromModules.keys()])];

  return {
    schemes,
    async adapterFor(url) {
      const scheme = schemeOf(url);
      const own = fromModules.get(scheme);
      if (own) return own;
      const load = BUILT_IN[scheme];
      if (!load) {
        const guess = closest(scheme, schemes);
        throw new ConfigError(
          `${where("store.url")}: no store adapter for the scheme "${scheme}:"${guess ? ` (did you mean "${guess}:"?)` : ""}; known: ${schemes.join(", ")}; third-party adapters go in store.adapter_modules`,
        );
      }
      let module: unknown;
      try {
        module = await load();
      } catch (error) {
        throw new Error(`cannot load the ${scheme} store adapter: ${firstLine(error)}`, { cause: error });
      }
      const adapter = (module as { default?: unknown }).default;
      if (!isStoreAdapter(adapter)) throw new Error(`the built-in ${scheme} store adapter is not available in this build`);
      return adapter;
    },
  };
}

function firstLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split("\n")[0]!;
}

/** Checks the adapter-specific keys of `[store]` against what the adapter declares. */
export function checkStoreOptions(adapter: StoreAdapter, options: Readonly<Record<string, unknown>>, where: (key: string) => string): void {
  const known = adapter.optionKeys ?? [];
  for (const key of Object.keys(options)) {
    if (known.includes(key)) continue;
    const guess = closest(key, [...known, "url", "adapter_modules"]);
    const list = known.length > 0 ? `; it knows ${known.join(", ")}` : "; it takes no options";
    throw new ConfigError(
      `${where(`store.${key}`)}: unknown key for the ${adapter.name} store${guess ? ` (did you mean store.${guess}?)` : ""}${list}`,
    );
  }
}

/** Picks the adapter for the configured URL, checks its options and opens the store. */
export async function openStore(config: ServerConfig, registry?: AdapterRegistry): Promise<{ store: Store; adapter: StoreAdapter }> {
  const where = (key: string) => config.where(key);
  const reg =
    registry ??
    (await createRegistry({
      adapterModules: config.store.adapterModules,
      baseDir: config.file === null ? process.cwd() : resolve(config.file, ".."),
      where,
    }));
  const adapter = await reg.adapterFor(config.store.url);
  checkStoreOptions(adapter, config.store.options, where);
  const store = await asConfigErrors(config.store.options, { url: where("store.url"), option: (key) => where(`store.${key}`) }, () =>
    adapter.open(config.store.url, config.store.options),
  );
  return { store, adapter };
}

/**
 * For admin commands: refuses to work as root on a Maildir store that belongs to another user. The
 * files a command makes (the directory file with every account, a maildir) would belong to root,
 * owner-only, and the server running as the store's owner could no longer read them: every RCPT and
 * every login would fail until someone fixed the owner by hand.
 */
export function refuseForeignStoreOwner(url: string, label: string): void {
  if (process.getuid?.() !== 0) return;
  if (!url.toLowerCase().startsWith("maildir:")) return;
  const root = resolve(url.slice("maildir:".length));
  // A root not made yet is made by this command: then the folder it goes into says whose it is.
  let owner: number | null = null;
  for (let dir = root; owner === null; dir = dirname(dir)) {
    try {
      owner = statSync(dir).uid;
    } catch {
      if (dirname(dir) === dir) return;
    }
  }
  if (owner === 0) return;
  throw new ConfigError(
    `${label}: ${root} belongs to uid ${owner}, not root; run admin commands as that user ` +
      `(e.g. sudo -u '#${owner}' mailroom ...), or files they make will be unreadable to the server`,
  );
}

/** How to name the URL and an option in a message: config keys (`c.toml: store.url`) or a flag. */
export interface StoreSettingNames {
  readonly url: string;
  option(key: string): string;
}

/**
 * Runs `action` (an adapter's open or migrate) and turns what the adapter says about a malformed URL or
 * a bad option value into a ConfigError on that key, so the operator is told the file and key and the
 * CLI exits 2. Adapters report bad values in their own words ("option \"pool_size\" must be…",
 * "option fsync must be…"), so the option is found by the name the message gives it; an unreachable or
 * failing backend stays a run-time error.
 */
export async function asConfigErrors<T>(
  options: Readonly<Record<string, unknown>>,
  names: StoreSettingNames,
  action: () => Promise<T>,
): Promise<T> {
  try {
    return await action();
  } catch (error) {
    throw configErrorFor(error, options, names) ?? error;
  }
}

function configErrorFor(error: unknown, options: Readonly<Record<string, unknown>>, names: StoreSettingNames): ConfigError | null {
  const message = firstLine(error);
  // An adapter's other StoreErrors (unavailable, temporary, …) are about the backend, not a setting.
  const aboutSetting = !isStoreError(error) || error.code === "invalid-name";
  const key = !aboutSetting ? undefined : Object.keys(options).find((k) => new RegExp(`\\boption\\s+"?${escapeRegExp(k)}(?![\\w-])`).test(message));
  if (key !== undefined) return new ConfigError(`${names.option(key)}: ${message}`);
  // The URL itself is left out: it may hold a password.
  if (causes(error).some((e) => (e as { code?: unknown }).code === "ERR_INVALID_URL")) {
    return new ConfigError(
      `${names.url}: not a valid URL (check the host and port, and percent-encode @ : / ? # % in the user name and password)`,
    );
  }
  if (isStoreError(error) && error.code === "invalid-name") return new ConfigError(`${names.url}: ${message}`);
  return null;
}

/** `error` and its causes, outermost first. */
function causes(error: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e = error; e !== undefined && e !== null && chain.length < 10; e = (e as { cause?: unknown }).cause) chain.push(e);
  return chain;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
