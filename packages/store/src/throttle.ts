import { normalizeAddress } from "./names.js";

/**
 * Slows down password guessing, per client address and per login, across every protocol that shares
 * one instance (the server gives POP3 and SMTP AUTH the same one). After a few free failures each
 * further failure doubles the delay; past a hard limit the key is refused until it cools down.
 * It is in memory: separate server processes each keep their own counts (which still bounds an
 * attacker to a small multiple of the single-process rate), unless the app passes the outcomes
 * between them, as `mailroom serve` does between its workers.
 */
export interface LoginThrottleOptions {
  /** Failures that cost nothing (typos). Default 3. */
  readonly freeFailures?: number;
  /** Delay after the first costly failure, doubled for each further one. Default 1000 ms. */
  readonly baseDelayMs?: number;
  /** The delay never grows beyond this. Default 15 s. */
  readonly maxDelayMs?: number;
  /** From this many failures on, logins for the key are refused outright. Default 30. */
  readonly refuseAfter?: number;
  /** A key's failures are forgotten after this long without one. Default 15 minutes. */
  readonly windowMs?: number;
  /** For tests. */
  readonly now?: () => number;
}

export interface LoginThrottle {
  /**
   * How long to wait before answering this attempt (0 for none), or `Infinity` to refuse it without
   * checking the password. The same for known and unknown logins, so it reveals nothing.
   */
  delayFor(client: string, login: string): number;
  failure(client: string, login: string): void;
  /** A good password clears the login's count (not the address's: one guessed account is enough). */
  success(client: string, login: string): void;
}

function canonicalLogin(login: string): string {
  try {
    return normalizeAddress(login);
  } catch {
    // Not an address: no account has it, but it is still counted (a guesser gains nothing from it).
    return login.trim().toLowerCase();
  }
}

interface Entry {
  failures: number;
  last: number;
}

export function createLoginThrottle(options: LoginThrottleOptions = {}): LoginThrottle {
  const free = options.freeFailures ?? 3;
  const base = options.baseDelayMs ?? 1000;
  const max = options.maxDelayMs ?? 15_000;
  const refuseAfter = options.refuseAfter ?? 30;
  const window = options.windowMs ?? 15 * 60_000;
  const now = options.now ?? Date.now;
  const entries = new Map<string, Entry>();
  // Bounded: a flood of distinct keys evicts the oldest ones instead of growing without end.
  const maxEntries = 100_000;

  const get = (key: string): Entry | undefined => {
    const entry = entries.get(key);
    if (entry && now() - entry.last > window) {
      entries.delete(key);
      return undefined;
    }
    return entry;
  };
  const delayOf = (failures: number): number =>
    // No failure never costs anything, also with freeFailures 0.
    failures >= refuseAfter ? Infinity : failures === 0 || failures < free ? 0 : Math.min(max, base * 2 ** (failures - free));
  const bump = (key: string): void => {
    const entry = get(key) ?? { failures: 0, last: 0 };
    entry.failures++;
    entry.last = now();
    entries.delete(key);
    entries.set(key, entry);
    if (entries.size > maxEntries) entries.delete(entries.keys().next().value!);
  };
  const addressKey = (client: string) => `a:${client}`;
  // The canonical form, so that every spelling that logs in to one account (a trailing dot on the
  // domain, a Unicode domain, upper case) shares that account's count.
  const loginKey = (login: string) => `l:${canonicalLogin(login)}`;

  return {
    delayFor(client, login) {
      const a = get(addressKey(client))?.failures ?? 0;
      const l = get(loginKey(login))?.failures ?? 0;
      return delayOf(Math.max(a, l));
    },
    failure(client, login) {
      bump(addressKey(client));
      bump(loginKey(login));
    },
    success(_client, login) {
      entries.delete(loginKey(login));
    },
  };
}
