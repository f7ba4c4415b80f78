/**
 * The server configuration: a TOML file (or the development defaults), then `MAILROOM_<SECTION>_<KEY>`
 * environment overrides, validated into one typed object. Every problem becomes a ConfigError whose
 * message names where the value came from (file and key, or the variable) and what is wrong with it.
 */
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseToml, TomlError } from "smol-toml";
import { ConfigError, closest } from "./errors.js";

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";

export interface ServerConfig {
  /** The config file, or null for the development setup. */
  readonly file: string | null;
  readonly development: boolean;
  /** Where the development certificate is kept (`<data dir>/.tls`). */
  readonly dataDir: string;
  readonly hostname: string;
  readonly store: {
    readonly url: string;
    /** Adapter-specific keys of `[store]`, checked against the adapter's `optionKeys` when it loads. */
    readonly options: Readonly<Record<string, unknown>>;
    readonly adapterModules: readonly string[];
  };
  readonly smtp: {
    readonly listen: readonly ListenAddress[];
    readonly submission: readonly ListenAddress[];
    readonly submissions: readonly ListenAddress[];
    readonly maxMessageSize: number;
    readonly maxRecipients: number;
    readonly allowLoopbackPlaintextAuth: boolean;
    readonly bareLineEndings: "reject" | "normalize";
    /** 0: no limit. */
    readonly maxSessionSeconds: number;
  };
  readonly pop3: {
    readonly listen: readonly ListenAddress[];
    readonly pop3s: readonly ListenAddress[];
    readonly allowPlaintextAuth: boolean;
    readonly expireDays: number | null;
    readonly idleTimeoutSeconds: number;
    /** 0: no limit. */
    readonly loginTimeoutSeconds: number;
    readonly leaseTtlSeconds: number;
    readonly loginDelaySeconds: number;
  };
  /** Absolute paths; null means "generate a self-signed certificate" (development) or no TLS. */
  readonly tls: { readonly cert: string; readonly key: string } | null;
  /** How long a password that passed its scrypt check is remembered in memory (0: never). */
  readonly auth: { readonly cacheSeconds: number };
  readonly limits: {
    readonly maxConnections: number;
    readonly maxConnectionsPerAddress: number;
    readonly shutdownTimeoutSeconds: number;
  };
  readonly log: { readonly level: LogLevel };
  readonly outbound: {
    /** null: on when the store has a queue. */
    readonly enabled: boolean | null;
    /** DNS servers ("ip" or "ip:port"); empty means the system's resolver. */
    readonly resolver: readonly string[];
    /** Milliseconds; null means the worker's default schedule. */
    readonly retrySchedule: readonly number[] | null;
    /** null: the outbound worker's default, 5 days. */
    readonly queueLifetimeHours: number | null;
    readonly concurrency: number;
    readonly perDomainConcurrency: number;
    /** MX addresses (all hosts together, in preference order) tried per domain and delivery attempt. */
    readonly mxAddressLimit: number;
    readonly smarthost: OutboundSmarthost | null;
    /** Test-only: the port MX hosts are contacted on (25 in real life). */
    readonly mxPort: number;
  };
  readonly metrics: {
    /** null: no metrics/health HTTP listener. */
    readonly listen: ListenAddress | null;
  };
  readonly server: {
    /** Processes that serve connections (each a full server on the shared listeners); 1 = no cluster. */
    readonly workers: number;
  };
  /** Says where a key's value came from, for messages: `mailroom.toml: smtp.listen` or `MAILROOM_SMTP_LISTEN`. */
  where(key: string): string;
}

export interface OutboundSmarthost {
  readonly host: string;
  readonly port: number;
  readonly tls: "starttls" | "implicit" | "none";
  /** Check the smarthost's certificate (trusted chain, its host name) before anything is sent. */
  readonly verify: boolean;
  /** The password stays in its file; `readSmarthostPassword` reads it when the worker starts. */
  readonly auth: { readonly username: string; readonly passwordFile: string } | null;
}

type Kind =
  | { readonly type: "string" }
  | { readonly type: "numbers" }
  | { readonly type: "dns-servers" }
  | { readonly type: "address" }
  | { readonly type: "address-or-off" }
  | { readonly type: "hostname" }
  | { readonly type: "url" }
  | { readonly type: "path" }
  | { readonly type: "strings" }
  | { readonly type: "listen" }
  | { readonly type: "boolean" }
  | { readonly type: "integer"; readonly min: number; readonly max?: number }
  | { readonly type: "enum"; readonly values: readonly string[] }
  | { readonly type: "days-or-never" }
  | { readonly type: "workers" };

const LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

/** Every known key per section; "" is the top level. */
/**
 * A DNS host name as the greeting, HELO and the trace headers need it (RFC 1123): labels of 1–63
 * letters, digits and inner hyphens, at most 253 octets. An IP address is not one (its last label is
 * all digits): a HELO must then use the address literal form, which is not what this key is for.
 */
function isHostName(text: string): boolean {
  if (text.length > 253) return false;
  const labels = text.split(".");
  if (!labels.every((label) => /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(label))) return false;
  return !/^\d+$/.test(labels[labels.length - 1]!);
}

/**
 * The longest time a key in seconds may set: JavaScript timers hold at most 2^31 - 1 ms (about 24.8
 * days), and a longer one fires at once, which would end every session as soon as it starts.
 */
const MAX_TIMER_SECONDS = 2_147_483;

const SCHEMA: Readonly<Record<string, Readonly<Record<string, Kind>>>> = {
  "": { hostname: { type: "hostname" } },
  store: { url: { type: "url" }, adapter_modules: { type: "strings" } },
  smtp: {
    listen: { type: "listen" },
    submission: { type: "listen" },
    submissions: { type: "listen" },
    max_message_size: { type: "integer", min: 1024 },
    max_recipients: { type: "integer", min: 1, max: 100_000 },
    allow_loopback_plaintext_auth: { type: "boolean" },
    bare_line_endings: { type: "enum", values: ["reject", "normalize"] },
    max_session_seconds: { type: "integer", min: 0, max: MAX_TIMER_SECONDS },
  },
  pop3: {
    listen: { type: "listen" },
    pop3s: { type: "listen" },
    allow_plaintext_auth: { type: "boolean" },
    expire_days: { type: "days-or-never" },
    idle_timeout_seconds: { type: "integer", min: 1, max: MAX_TIMER_SECONDS },
    login_timeout_seconds: { type: "integer", min: 0, max: MAX_TIMER_SECONDS },
    lease_ttl_seconds: { type: "integer", min: 1, max: MAX_TIMER_SECONDS },
    login_delay_seconds: { type: "integer", min: 0, max: MAX_TIMER_SECONDS },
  },
  tls: { cert: { type: "path" }, key: { type: "path" } },
  auth: { cache_seconds: { type: "integer", min: 0, max: 86_400 } },
  limits: {
    max_connections: { type: "integer", min: 1 },
    max_connections_per_address: { type: "integer", min: 1 },
    shutdown_timeout_seconds: { type: "integer", min: 0, max: 3600 },
  },
  log: { level: { type: "enum", values: LEVELS } },
  outbound: {
    enabled: { type: "boolean" },
    resolver: { type: "dns-servers" },
    retry_schedule_minutes: { type: "numbers" },
    queue_lifetime_hours: { type: "integer", min: 1, max: 8760 },
    concurrency: { type: "integer", min: 1, max: 1000 },
    per_domain_concurrency: { type: "integer", min: 1, max: 100 },
    // Each address may cost a whole connect timeout (60 s) while the item holds a delivery slot: at 100,
    // a domain whose MX hosts are all dead already holds one for over an hour and a half per attempt.
    mx_address_limit: { type: "integer", min: 1, max: 100 },
    smarthost: { type: "address" },
    smarthost_tls: { type: "enum", values: ["starttls", "implicit", "none"] },
    smarthost_tls_verify: { type: "boolean" },
    smarthost_user: { type: "string" },
    smarthost_password_file: { type: "path" },
    // Test-only: lets a test point MX delivery at a loopback receiver on a high port.
    mx_port: { type: "integer", min: 1, max: 65535 },
  },
  metrics: { listen: { type: "address-or-off" } },
  server: { workers: { type: "workers" } },
};

const SECTIONS = Object.keys(SCHEMA).filter((s) => s !== "");

/** The values used when neither the file nor the environment sets a key. */
const PRODUCTION_DEFAULTS: Record<string, unknown> = {
  hostname: undefined,
  "store.url": undefined,
  "store.adapter_modules": [],
  "smtp.listen": ["0.0.0.0:25"],
  "smtp.submission": ["0.0.0.0:587"],
  "smtp.submissions": ["0.0.0.0:465"],
  "smtp.max_message_size": 26_214_400,
  "smtp.max_recipients": 100,
  "smtp.allow_loopback_plaintext_auth": false,
  "smtp.bare_line_endings": "reject",
  "smtp.max_session_seconds": 1800,
  "pop3.listen": ["0.0.0.0:110"],
  "pop3.pop3s": ["0.0.0.0:995"],
  "pop3.allow_plaintext_auth": false,
  "pop3.expire_days": "never",
  "pop3.idle_timeout_seconds": 600,
  "pop3.login_timeout_seconds": 180,
  "pop3.lease_ttl_seconds": 60,
  "pop3.login_delay_seconds": 0,
  "auth.cache_seconds": 900,
  "limits.max_connections": 10_000,
  "limits.max_connections_per_address": 100,
  "limits.shutdown_timeout_seconds": 10,
  "log.level": "info",
  "outbound.resolver": [],
  "outbound.concurrency": 8,
  "outbound.per_domain_concurrency": 2,
  "outbound.mx_address_limit": 5,
  "outbound.smarthost_tls": "starttls",
  "outbound.smarthost_tls_verify": false,
  "outbound.mx_port": 25,
  "metrics.listen": "",
  "server.workers": 1,
};

/** The development setup: everything on loopback, high ports, Maildir under ./data. */
export const DEVELOPMENT_DEFAULTS: Record<string, unknown> = {
  ...PRODUCTION_DEFAULTS,
  hostname: "localhost",
  "store.url": "maildir:./data",
  "smtp.listen": ["127.0.0.1:2525"],
  "smtp.submission": ["127.0.0.1:2587"],
  "smtp.submissions": ["127.0.0.1:2465"],
  // Loopback only, so plaintext AUTH is harmless and makes local testing with any client easy.
  "smtp.allow_loopback_plaintext_auth": true,
  "pop3.listen": ["127.0.0.1:2110"],
  "pop3.pop3s": ["127.0.0.1:2995"],
};

export interface LoadOptions {
  /** The config file; absent → development setup. */
  readonly file?: string;
  /** Defaults to `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Base for relative paths in the development setup and in environment variables. Default `process.cwd()`. */
  readonly cwd?: string;
}

/** Raw value plus where it came from. */
interface Entry {
  readonly value: unknown;
  readonly origin: string;
}

/** Reads, overrides and validates. Throws ConfigError. */
export function loadConfig(options: LoadOptions = {}): ServerConfig {
  const cwd = options.cwd ?? process.cwd();
  const env = options.env ?? process.env;
  const file = options.file === undefined ? null : resolve(cwd, options.file);
  const entries = new Map<string, Entry>();
  const storeOptions = new Map<string, Entry>();

  if (file !== null) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (error) {
      throw new ConfigError(`${file}: cannot read the config file: ${describeIoError(error)}`);
    }
    let document: Record<string, unknown>;
    try {
      document = parseToml(text) as Record<string, unknown>;
    } catch (error) {
      const detail = error instanceof TomlError ? `line ${error.line}, column ${error.column}: ${firstLine(error.message)}` : String(error);
      throw new ConfigError(`${file}: not valid TOML: ${detail}`);
    }
    collectFile(file, document, entries, storeOptions);
  }
  collectEnv(env, entries, storeOptions);

  const base = file === null ? cwd : dirname(file);
  const defaults = file === null ? DEVELOPMENT_DEFAULTS : PRODUCTION_DEFAULTS;
  const origins = new Map<string, string>();
  const get = <T>(key: string): T => {
    const entry = entries.get(key);
    const [section, name] = splitKey(key);
    const kind = SCHEMA[section]![name]!;
    if (entry) {
      origins.set(key, entry.origin);
      return convert(kind, entry.value, entry.origin, entry.origin.startsWith("MAILROOM_") ? cwd : base) as T;
    }
    origins.set(key, file === null ? `development setup: ${key}` : `${file}: ${key}`);
    const fallback = defaults[key];
    if (fallback === undefined) return undefined as T;
    return convert(kind, fallback, origins.get(key)!, base) as T;
  };

  const hostname = get<string | undefined>("hostname");
  if (hostname === undefined) throw new ConfigError(`${file}: hostname: required (the name this server answers to, e.g. "mail.example.test")`);
  const url = get<string | undefined>("store.url");
  if (url === undefined) throw new ConfigError(`${file}: store.url: required (e.g. "maildir:/var/mail/mailroom" or "postgres://…")`);

  const cert = get<string | undefined>("tls.cert");
  const key = get<string | undefined>("tls.key");
  if ((cert === undefined) !== (key === undefined)) {
    const missing = cert === undefined ? "tls.cert" : "tls.key";
    const present = cert === undefined ? "tls.key" : "tls.cert";
    throw new ConfigError(`${origins.get(missing)}: required together with ${present}`);
  }
  if (cert !== undefined) checkReadable(cert, origins.get("tls.cert")!);
  if (key !== undefined) checkReadable(key, origins.get("tls.key")!);

  const smarthost = outboundSmarthost(get, origins);
  const retryMinutes = get<number[] | undefined>("outbound.retry_schedule_minutes");

  const storeOrigin = origins.get("store.url")!;
  const config: ServerConfig = {
    file,
    development: file === null,
    dataDir: resolve(cwd, "data"),
    hostname,
    store: {
      url: resolveStoreUrl(url, storeOrigin.startsWith("MAILROOM_") ? cwd : base),
      options: Object.fromEntries([...storeOptions].map(([k, e]) => [k, e.value])),
      adapterModules: get<string[]>("store.adapter_modules"),
    },
    smtp: {
      listen: get("smtp.listen"),
      submission: get("smtp.submission"),
      submissions: get("smtp.submissions"),
      maxMessageSize: get("smtp.max_message_size"),
      maxRecipients: get("smtp.max_recipients"),
      allowLoopbackPlaintextAuth: get("smtp.allow_loopback_plaintext_auth"),
      bareLineEndings: get("smtp.bare_line_endings"),
      maxSessionSeconds: get("smtp.max_session_seconds"),
    },
    pop3: {
      listen: get("pop3.listen"),
      pop3s: get("pop3.pop3s"),
      allowPlaintextAuth: get("pop3.allow_plaintext_auth"),
      expireDays: get("pop3.expire_days"),
      idleTimeoutSeconds: get("pop3.idle_timeout_seconds"),
      loginTimeoutSeconds: get("pop3.login_timeout_seconds"),
      leaseTtlSeconds: get("pop3.lease_ttl_seconds"),
      loginDelaySeconds: get("pop3.login_delay_seconds"),
    },
    tls: cert !== undefined && key !== undefined ? { cert, key } : null,
    auth: { cacheSeconds: get("auth.cache_seconds") },
    limits: {
      maxConnections: get("limits.max_connections"),
      maxConnectionsPerAddress: get("limits.max_connections_per_address"),
      shutdownTimeoutSeconds: get("limits.shutdown_timeout_seconds"),
    },
    log: { level: get("log.level") },
    outbound: {
      enabled: get<boolean | undefined>("outbound.enabled") ?? null,
      resolver: get("outbound.resolver"),
      retrySchedule: retryMinutes === undefined ? null : retryMinutes.map((m) => Math.round(m * 60_000)),
      queueLifetimeHours: get<number | undefined>("outbound.queue_lifetime_hours") ?? null,
      concurrency: get("outbound.concurrency"),
      perDomainConcurrency: get("outbound.per_domain_concurrency"),
      mxAddressLimit: get("outbound.mx_address_limit"),
      smarthost,
      mxPort: get("outbound.mx_port"),
    },
    metrics: { listen: get<ListenAddress | null>("metrics.listen") },
    server: { workers: get("server.workers") },
    where(k: string): string {
      const known = origins.get(k) ?? storeOptions.get(k.replace(/^store\./, ""))?.origin;
      return known ?? (file === null ? `development setup: ${k}` : `${file}: ${k}`);
    },
  };
  if (config.tls === null && !config.development) {
    const implicit =
      config.smtp.submissions.length > 0 ? "smtp.submissions" : config.pop3.pop3s.length > 0 ? "pop3.pop3s" : null;
    if (implicit) throw new ConfigError(`${config.where(implicit)}: implicit TLS listeners need [tls] cert and key (or set ${implicit} = [])`);
  }
  return config;
}

function outboundSmarthost(get: <T>(key: string) => T, origins: ReadonlyMap<string, string>): OutboundSmarthost | null {
  const address = get<ListenAddress | undefined>("outbound.smarthost");
  const tls = get<"starttls" | "implicit" | "none">("outbound.smarthost_tls");
  const user = get<string | undefined>("outbound.smarthost_user");
  const passwordFile = get<string | undefined>("outbound.smarthost_password_file");
  if ((user === undefined) !== (passwordFile === undefined)) {
    const missing = user === undefined ? "outbound.smarthost_user" : "outbound.smarthost_password_file";
    const present = user === undefined ? "outbound.smarthost_password_file" : "outbound.smarthost_user";
    throw new ConfigError(`${origins.get(missing)}: required together with ${present}`);
  }
  if (address === undefined) {
    if (user !== undefined) throw new ConfigError(`${origins.get("outbound.smarthost_user")}: needs outbound.smarthost ("host:port")`);
    return null;
  }
  if (address.port === 0) fail(origins.get("outbound.smarthost")!, "the smarthost needs a real port (587, 465 or 25)");
  // The worker sends a password only over TLS, so this pair could never deliver anything.
  if (tls === "none" && user !== undefined) {
    throw new ConfigError(`${origins.get("outbound.smarthost_tls")}: "none" cannot be used with outbound.smarthost_user (the password is sent only over TLS); use "starttls" or "implicit"`);
  }
  const verify = get<boolean>("outbound.smarthost_tls_verify");
  if (verify && tls === "none") {
    throw new ConfigError(`${origins.get("outbound.smarthost_tls_verify")}: there is no certificate to check with outbound.smarthost_tls = "none"`);
  }
  if (passwordFile !== undefined) readSecret(passwordFile, origins.get("outbound.smarthost_password_file")!);
  return {
    host: address.host,
    port: address.port,
    tls,
    verify,
    auth: user !== undefined && passwordFile !== undefined ? { username: user, passwordFile } : null,
  };
}

/** The file's first line; the password itself never goes into the config object or a message. */
function readSecret(path: string, origin: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    return fail(origin, `cannot read ${path}: ${describeIoError(error)}`);
  }
  const secret = text.split(/\r?\n/)[0] ?? "";
  if (secret.length === 0) fail(origin, `${path} is empty; it should hold the smarthost password on its first line`);
  return secret;
}

/** Reads the smarthost password from its file (ConfigError naming the key if that fails). */
export function readSmarthostPassword(config: ServerConfig): string | null {
  const auth = config.outbound.smarthost?.auth;
  if (!auth) return null;
  return readSecret(auth.passwordFile, config.where("outbound.smarthost_password_file"));
}

function splitKey(key: string): [string, string] {
  const dot = key.indexOf(".");
  return dot < 0 ? ["", key] : [key.slice(0, dot), key.slice(dot + 1)];
}

function firstLine(text: string): string {
  return text.split("\n")[0]!.replace(/^Invalid TOML document: /, "");
}

function describeIoError(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "is a directory";
  return error instanceof Error ? error.message : String(error);
}

function typeName(value: unknown): string {
  if (Array.isArray(value)) return "an array";
  if (value === null) return "null";
  if (value instanceof Date) return "a date";
  if (typeof value === "object") return "a table";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  return `${typeof value} ${String(value)}`;
}

function collectFile(file: string, document: Record<string, unknown>, entries: Map<string, Entry>, storeOptions: Map<string, Entry>): void {
  for (const [name, value] of Object.entries(document)) {
    if (name in SCHEMA[""]!) {
      entries.set(name, { value, origin: `${file}: ${name}` });
      continue;
    }
    if (!(name in SCHEMA) || name === "") {
      const isTable = typeof value === "object" && value !== null && !Array.isArray(value);
      const candidates = isTable ? SECTIONS : Object.keys(SCHEMA[""]!);
      const guess = closest(name, candidates);
      throw new ConfigError(
        `${file}: ${isTable ? `[${name}]` : name}: unknown ${isTable ? "section" : "key"}${guess ? ` (did you mean ${isTable ? `[${guess}]` : guess}?)` : ""}`,
      );
    }
    if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Date) {
      throw new ConfigError(`${file}: ${name}: expected a [${name}] section, got ${typeName(value)}`);
    }
    const known = SCHEMA[name]!;
    for (const [key, inner] of Object.entries(value as Record<string, unknown>)) {
      const origin = `${file}: ${name}.${key}`;
      if (key in known) entries.set(`${name}.${key}`, { value: inner, origin });
      else if (name === "store") storeOptions.set(key, { value: inner, origin });
      else {
        const guess = closest(key, Object.keys(known));
        throw new ConfigError(`${origin}: unknown key${guess ? ` (did you mean ${name}.${guess}?)` : ""}`);
      }
    }
  }
}

function collectEnv(env: Readonly<Record<string, string | undefined>>, entries: Map<string, Entry>, storeOptions: Map<string, Entry>): void {
  for (const [variable, value] of Object.entries(env)) {
    if (!variable.startsWith("MAILROOM_") || value === undefined) continue;
    const rest = variable.slice("MAILROOM_".length).toLowerCase();
    if (rest === "hostname") {
      entries.set("hostname", { value, origin: variable });
      continue;
    }
    const underscore = rest.indexOf("_");
    const section = underscore < 0 ? rest : rest.slice(0, underscore);
    // Other MAILROOM_* variables (MAILROOM_CONFIG, MAILROOM_TEST_PG, …) belong to someone else.
    if (!(section in SCHEMA) || section === "" || underscore < 0) continue;
    const key = rest.slice(underscore + 1);
    const origin = variable;
    if (key in SCHEMA[section]!) entries.set(`${section}.${key}`, { value, origin });
    else if (section === "store") storeOptions.set(key, { value: envScalar(value), origin });
    else {
      const guess = closest(key, Object.keys(SCHEMA[section]!));
      throw new ConfigError(
        `${variable}: no such setting${guess ? ` (did you mean MAILROOM_${section.toUpperCase()}_${guess.toUpperCase()}?)` : ""}`,
      );
    }
  }
}

/** Adapter options from the environment have no declared type: numbers and booleans are recognised. */
function envScalar(value: string): string | number | boolean {
  if (value === "true") return true;
  if (value === "false") return false;
  if (/^-?\d{1,15}$/.test(value)) return Number(value);
  return value;
}

function fail(origin: string, message: string): never {
  throw new ConfigError(`${origin}: ${message}`);
}

function convert(kind: Kind, raw: unknown, origin: string, base: string): unknown {
  const fromEnv = origin.startsWith("MAILROOM_");
  switch (kind.type) {
    case "string":
    case "url":
    case "hostname":
    case "path": {
      if (typeof raw !== "string") fail(origin, `expected a string, got ${typeName(raw)}`);
      const text = raw.trim();
      if (text.length === 0) fail(origin, "must not be empty");
      if (kind.type === "hostname" && !isHostName(text)) {
        fail(origin, `${JSON.stringify(raw)} is not a host name (labels of letters, digits and inner hyphens, up to 63 each, joined by dots; not an IP address)`);
      }
      if (kind.type === "url" && !/^[A-Za-z][A-Za-z0-9+.-]*:/.test(text)) {
        fail(origin, `${JSON.stringify(raw)} is not a store URL: expected scheme:… such as "maildir:./data", "postgres://host/db", "redis://host"`);
      }
      if (kind.type === "path") return isAbsolute(text) ? text : resolve(base, text);
      return text;
    }
    case "strings": {
      const list = fromEnv && typeof raw === "string" ? splitList(raw) : raw;
      if (!Array.isArray(list) || !list.every((item) => typeof item === "string" && item.trim() !== "")) {
        fail(origin, `expected a list of names, got ${typeName(raw)}`);
      }
      return list.map((item: string) => item.trim());
    }
    case "listen": {
      const list = fromEnv && typeof raw === "string" ? splitList(raw) : typeof raw === "string" ? [raw] : raw;
      if (!Array.isArray(list)) fail(origin, `expected a list of "host:port" strings, got ${typeName(raw)}`);
      return list.map((item: unknown) => parseListen(item, origin));
    }
    case "boolean": {
      if (typeof raw === "boolean") return raw;
      if (fromEnv && typeof raw === "string") {
        const text = raw.trim().toLowerCase();
        if (["true", "1", "yes", "on"].includes(text)) return true;
        if (["false", "0", "no", "off"].includes(text)) return false;
      }
      return fail(origin, `expected true or false, got ${typeName(raw)}`);
    }
    case "integer":
      return toInteger(raw, origin, kind.min, kind.max, fromEnv);
    case "numbers": {
      const list = fromEnv && typeof raw === "string" ? splitList(raw).map((t) => (/^\d+(\.\d+)?$/.test(t) ? Number(t) : t)) : raw;
      if (!Array.isArray(list) || list.length === 0) fail(origin, `expected a non-empty list of positive numbers (minutes), got ${typeName(raw)}`);
      const bad = list.find((n: unknown) => typeof n !== "number" || !Number.isFinite(n) || n <= 0);
      if (bad !== undefined) fail(origin, `expected a list of positive numbers (minutes), got ${typeName(bad)} in it`);
      return list;
    }
    case "dns-servers": {
      const list = fromEnv && typeof raw === "string" ? splitList(raw) : typeof raw === "string" ? [raw] : raw;
      if (!Array.isArray(list)) fail(origin, `expected a list of "ip:port" strings, got ${typeName(raw)}`);
      return list.map((item: unknown) => {
        if (typeof item === "string" && isIP(item.trim()) !== 0) return item.trim();
        const address = parseListen(item, origin);
        if (isIP(address.host) === 0) fail(origin, `${JSON.stringify(item)}: a DNS server must be an IP address, not a name`);
        if (address.port === 0) fail(origin, `${JSON.stringify(item)}: port 0 is not a DNS server`);
        return formatAddress(address);
      });
    }
    case "address":
      return parseListen(raw, origin);
    case "address-or-off": {
      if (typeof raw === "string" && raw.trim() === "") return null;
      return parseListen(raw, origin);
    }
    case "enum": {
      if (typeof raw !== "string" || !kind.values.includes(raw.trim())) {
        const guess = typeof raw === "string" ? closest(raw, kind.values) : null;
        fail(origin, `expected one of ${kind.values.map((v) => JSON.stringify(v)).join(", ")}, got ${typeName(raw)}${guess ? ` (did you mean "${guess}"?)` : ""}`);
      }
      return raw.trim();
    }
    case "workers": {
      // "auto": one per CPU the process may use, as nginx's worker_processes auto.
      if (typeof raw === "string" && raw.trim().toLowerCase() === "auto") return Math.max(1, availableParallelism());
      if (typeof raw === "string" && !fromEnv) fail(origin, `expected "auto" or a number of processes, got ${typeName(raw)}`);
      return toInteger(raw, origin, 1, 256, fromEnv, `"auto" or a number of processes`);
    }
    case "days-or-never": {
      if (typeof raw === "string" && raw.trim().toLowerCase() === "never") return null;
      if (typeof raw === "string" && !fromEnv) fail(origin, `expected "never" or a number of days, got ${typeName(raw)}`);
      return toInteger(raw, origin, 0, 36_500, fromEnv, `"never" or a number of days`);
    }
  }
}

function toInteger(raw: unknown, origin: string, min: number, max: number | undefined, fromEnv: boolean, what = "an integer"): number {
  let value: number | null = null;
  if (typeof raw === "number" && Number.isInteger(raw)) value = raw;
  else if (typeof raw === "bigint") value = Number(raw);
  else if (fromEnv && typeof raw === "string" && /^\s*-?\d+\s*$/.test(raw)) value = Number(raw);
  if (value === null || !Number.isSafeInteger(value)) return fail(origin, `expected ${what}, got ${typeName(raw)}`);
  if (value < min) fail(origin, `must be at least ${min}, got ${value}`);
  if (max !== undefined && value > max) fail(origin, `must be at most ${max}, got ${value}`);
  return value;
}

function splitList(text: string): string[] {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** `host:port`, `[v6]:port`. Port 0 asks the system for a free port (tests). */
export function parseListen(item: unknown, origin: string): ListenAddress {
  if (typeof item !== "string") fail(origin, `expected "host:port" strings, got ${typeName(item)}`);
  const text = item.trim();
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(text);
  if (!match) fail(origin, `${JSON.stringify(item)} is not "host:port" (e.g. "0.0.0.0:25" or "[::]:25")`);
  const port = Number(match[3]);
  if (port > 65535) fail(origin, `${JSON.stringify(item)}: port ${port} is out of range (0–65535)`);
  return { host: match[1] ?? match[2]!, port };
}

export function formatAddress(address: { host: string; port: number }): string {
  return address.host.includes(":") ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** Relative `maildir:` paths are relative to the config file, not to wherever the server was started. */
function resolveStoreUrl(url: string, base: string): string {
  const match = /^maildir:(.*)$/i.exec(url);
  if (!match) return url;
  const path = match[1]!;
  if (path.startsWith("//") || path.length === 0 || isAbsolute(path)) return url;
  return `maildir:${resolve(base, path)}`;
}

function checkReadable(path: string, origin: string): void {
  try {
    readFileSync(path);
  } catch (error) {
    fail(origin, `cannot read ${path}: ${describeIoError(error)}`);
  }
}

/** The keys and their environment variables, for `--help` and the README. */
export function environmentVariables(): string[] {
  const names: string[] = [];
  for (const [section, keys] of Object.entries(SCHEMA)) {
    for (const key of Object.keys(keys)) names.push(`MAILROOM_${section ? `${section}_` : ""}${key}`.toUpperCase());
  }
  return names;
}
