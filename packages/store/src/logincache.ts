import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Remembers passwords that passed their scrypt check, for a while, so that the next login with the
 * same password skips the scrypt. Mail clients log in over and over: a phone or a POP3 client that
 * "leaves a copy on the server" polls every few minutes, and each login is tens of milliseconds of
 * CPU and 32 MiB of memory (the default scrypt cost). With a few hundred such clients the hashing
 * alone would keep a core of a small machine busy. Dovecot (`auth_cache_size`) and directory servers
 * offer the same; the choices here:
 *
 * - Entries are keyed by the stored hash, not by the login: a password change (a new hash) or a
 *   deleted account (no hash to look up) takes effect at once, with nothing to invalidate.
 * - What is kept is an HMAC of the password under a key made at random per process, never the
 *   password. It sits in memory only; nothing of it reaches disk.
 * - Only successes are kept. A wrong password always pays the full scrypt (and the login throttle),
 *   so guessing costs exactly what it did; a hit only answers faster what the reply says anyway.
 * - An entry lives `ttlMs` from the scrypt check that made it (a hit does not extend it), so every
 *   password is checked against its hash again at least that often. The table is bounded: the oldest
 *   entries go first.
 *
 * What it gives up: someone who can read the server's memory could test guesses against a cached
 * entry at HMAC speed instead of scrypt speed, for accounts that logged in within `ttlMs`. Such a
 * reader also sees the plaintext passwords of the logins themselves as they arrive, so the cache adds
 * little to that exposure; `ttlMs: 0` turns it off.
 */
export interface LoginCacheOptions {
  /** How long a verified password is remembered. Default 15 minutes; 0 turns the cache off. */
  readonly ttlMs?: number;
  /** Entries kept at most (about 200 octets each). Default 10,000. */
  readonly maxEntries?: number;
  /** For tests. */
  readonly now?: () => number;
}

export interface LoginCache {
  /** True if `password` passed the check against `hash` within the time to live. */
  has(hash: string, password: string): boolean;
  /** Records that `password` passed the scrypt check against `hash`. */
  add(hash: string, password: string): void;
}

interface Entry {
  readonly digest: Buffer;
  readonly expires: number;
}

export function createLoginCache(options: LoginCacheOptions = {}): LoginCache {
  const ttlMs = options.ttlMs ?? 15 * 60_000;
  const maxEntries = options.maxEntries ?? 10_000;
  const now = options.now ?? Date.now;
  if (!(ttlMs >= 0) || !Number.isInteger(maxEntries) || maxEntries < 1) {
    throw new RangeError("createLoginCache: ttlMs must be 0 or more and maxEntries a positive integer");
  }
  const key = randomBytes(32);
  // Insertion order is age order (an entry is only ever set once per check), so the first is the oldest.
  const entries = new Map<string, Entry>();
  const digestOf = (password: string): Buffer => createHmac("sha256", key).update(password.normalize("NFC")).digest();

  return {
    has(hash, password) {
      if (ttlMs === 0) return false;
      const entry = entries.get(hash);
      if (entry === undefined) return false;
      if (entry.expires <= now()) {
        entries.delete(hash);
        return false;
      }
      return timingSafeEqual(entry.digest, digestOf(password));
    },
    add(hash, password) {
      if (ttlMs === 0) return;
      entries.delete(hash);
      entries.set(hash, { digest: digestOf(password), expires: now() + ttlMs });
      while (entries.size > maxEntries) entries.delete(entries.keys().next().value!);
    },
  };
}
