import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from "node:crypto";
import type { Account, Directory } from "./contract.js";
import { normalizeAddress } from "./names.js";
import { isStoreError } from "./errors.js";
import type { LoginCache } from "./logincache.js";

/**
 * Passwords are kept only as scrypt hashes in PHC string form:
 * `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (base64 without padding). The parameters travel with the hash,
 * so they can be raised later without breaking existing accounts.
 */
export interface PasswordHashOptions {
  /** log2 of the CPU/memory cost N. Default 15 (32 MiB, tens of milliseconds). */
  readonly logN?: number;
  readonly r?: number;
  readonly p?: number;
}

const KEY_LENGTH = 32;
const SALT_LENGTH = 16;

/**
 * scrypt runs on the same small thread pool as file I/O (libuv's). A burst of logins or password
 * guesses must not starve mail delivery of it, so at most this many hashes run at once; the rest wait
 * their turn (a guessing burst then slows guessing, not the Maildir store).
 */
const MAX_CONCURRENT_HASHES = 2;
let running = 0;
const waiting: Array<() => void> = [];

async function withHashSlot<T>(work: () => Promise<T>): Promise<T> {
  if (running >= MAX_CONCURRENT_HASHES) await new Promise<void>((resolve) => waiting.push(resolve));
  else running++;
  try {
    return await work();
  } finally {
    const next = waiting.shift();
    // The slot passes straight to the next waiter; `running` only drops when nobody waits.
    if (next) next();
    else running--;
  }
}

function derive(password: string, salt: Uint8Array, logN: number, r: number, p: number): Promise<Buffer> {
  const options: ScryptOptions = { N: 2 ** logN, r, p, maxmem: 256 * 1024 * 1024 };
  return withHashSlot(
    () =>
      new Promise((resolve, reject) => {
        scrypt(password.normalize("NFC"), salt, KEY_LENGTH, options, (error, key) => (error ? reject(error) : resolve(key)));
      }),
  );
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("base64").replace(/=+$/, "");

export async function hashPassword(password: string, options: PasswordHashOptions = {}): Promise<string> {
  const logN = options.logN ?? 15;
  const r = options.r ?? 8;
  const p = options.p ?? 1;
  const salt = randomBytes(SALT_LENGTH);
  const key = await derive(password, salt, logN, r, p);
  return `$scrypt$ln=${logN},r=${r},p=${p}$${b64(salt)}$${b64(key)}`;
}

interface ParsedHash {
  logN: number;
  r: number;
  p: number;
  salt: Buffer;
  key: Buffer;
}

const PHC = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

function parseHash(hash: string): ParsedHash | null {
  const m = PHC.exec(hash);
  if (!m) return null;
  const logN = Number(m[1]);
  const r = Number(m[2]);
  const p = Number(m[3]);
  // Bounds stop a planted hash from making one login allocate gigabytes.
  if (logN < 10 || logN > 20 || r < 1 || r > 32 || p < 1 || p > 16) return null;
  return { logN, r, p, salt: Buffer.from(m[4]!, "base64"), key: Buffer.from(m[5]!, "base64") };
}

/** True if `hash` looks like a hash this module can verify. */
export function isPasswordHash(hash: string): boolean {
  return parseHash(hash) !== null;
}

/**
 * Constant-time check of a password against a PHC scrypt hash. False for an unknown format. With a
 * `cache`, a password that passed recently is accepted without the scrypt, and one that passes now is
 * remembered (see logincache.ts).
 */
export async function verifyPassword(password: string, hash: string, cache?: LoginCache): Promise<boolean> {
  const parsed = parseHash(hash);
  if (!parsed) return false;
  if (cache?.has(hash, password)) return true;
  const key = await derive(password, parsed.salt, parsed.logN, parsed.r, parsed.p);
  const good = key.length === parsed.key.length && timingSafeEqual(key, parsed.key);
  if (good) cache?.add(hash, password);
  return good;
}

/**
 * Hashes of nothing in particular, one per parameter set, that unknown logins are verified against so
 * that they cost what a wrong password for a real account costs. The parameters are those of the
 * account hash this process verified last: with the accounts' hashes all made one way (the usual
 * case, including a directory hashed with other than the default parameters), an unknown login then
 * takes as long as a known one, where a fixed default would make it slower or faster than every real
 * account. A few sets are kept, for a directory in the middle of a change of parameters.
 */
const dummyHashes = new Map<string, Promise<string>>();
const MAX_DUMMY_HASHES = 4;
let recentParams: Required<PasswordHashOptions> = { logN: 15, r: 8, p: 1 };

function dummyHash(params: Required<PasswordHashOptions>): Promise<string> {
  const key = `${params.logN},${params.r},${params.p}`;
  let hash = dummyHashes.get(key);
  if (hash === undefined) {
    hash = hashPassword(randomBytes(12).toString("hex"), params);
    if (dummyHashes.size >= MAX_DUMMY_HASHES) dummyHashes.delete(dummyHashes.keys().next().value!);
    dummyHashes.set(key, hash);
  }
  return hash;
}

/**
 * Checks a login. Unknown user, malformed login, an account whose stored hash cannot be checked (a
 * locked or foreign entry) and wrong password all give null after about the same amount of work, so
 * the answer and its timing tell nothing about which accounts exist (a `cache` only shortens the check
 * of a right password). Store failures are thrown (a protocol answers them with a temporary error, not
 * "wrong password").
 */
export async function authenticate(
  directory: Directory,
  login: string,
  password: string,
  cache?: LoginCache,
): Promise<Account | null> {
  let account: Account | null = null;
  try {
    account = await directory.getAccount(normalizeAddress(login));
  } catch (error) {
    if (!isStoreError(error) || error.code !== "invalid-name") throw error;
  }
  const parsed = account === null ? null : parseHash(account.passwordHash);
  if (account === null || parsed === null) {
    await verifyPassword(password, await dummyHash(recentParams));
    return null;
  }
  if (parsed.logN !== recentParams.logN || parsed.r !== recentParams.r || parsed.p !== recentParams.p) {
    recentParams = { logN: parsed.logN, r: parsed.r, p: parsed.p };
  }
  return (await verifyPassword(password, account.passwordHash, cache)) ? account : null;
}
