import { describe, expect, it } from "vitest";
import { createLoginCache } from "../src/logincache.js";

const HASH_A = "$scrypt$ln=15,r=8,p=1$c2FsdEE$a2V5QQ";
const HASH_B = "$scrypt$ln=15,r=8,p=1$c2FsdEI$a2V5Qg";

describe("createLoginCache", () => {
  it("knows a password only after it was added, and only for that hash", () => {
    const cache = createLoginCache();
    expect(cache.has(HASH_A, "secret")).toBe(false);
    cache.add(HASH_A, "secret");
    expect(cache.has(HASH_A, "secret")).toBe(true);
    expect(cache.has(HASH_A, "Secret")).toBe(false);
    expect(cache.has(HASH_A, "")).toBe(false);
    // Another hash (another account, or the same account after a password change) knows nothing.
    expect(cache.has(HASH_B, "secret")).toBe(false);
  });

  it("treats composed and decomposed Unicode as the same password, as the scrypt check does", () => {
    const cache = createLoginCache();
    cache.add(HASH_A, "caf\u00e9");
    expect(cache.has(HASH_A, "cafe\u0301")).toBe(true);
  });

  it("forgets an entry ttlMs after it was added, however often it was used", () => {
    let now = 1_000_000;
    const cache = createLoginCache({ ttlMs: 60_000, now: () => now });
    cache.add(HASH_A, "secret");
    now += 59_999;
    expect(cache.has(HASH_A, "secret")).toBe(true);
    now += 1;
    expect(cache.has(HASH_A, "secret")).toBe(false);
    // Added again (a fresh scrypt check): good for another ttlMs.
    cache.add(HASH_A, "secret");
    now += 30_000;
    expect(cache.has(HASH_A, "secret")).toBe(true);
  });

  it("keeps at most maxEntries, dropping the oldest first", () => {
    const cache = createLoginCache({ maxEntries: 2 });
    cache.add("h1", "p1");
    cache.add("h2", "p2");
    cache.add("h3", "p3");
    expect(cache.has("h1", "p1")).toBe(false);
    expect(cache.has("h2", "p2")).toBe(true);
    expect(cache.has("h3", "p3")).toBe(true);
    // Adding h2 again makes it the newest, so h3 goes next.
    cache.add("h2", "p2");
    cache.add("h4", "p4");
    expect(cache.has("h3", "p3")).toBe(false);
    expect(cache.has("h2", "p2")).toBe(true);
  });

  it("remembers nothing with ttlMs 0, and refuses nonsense options", () => {
    const off = createLoginCache({ ttlMs: 0 });
    off.add(HASH_A, "secret");
    expect(off.has(HASH_A, "secret")).toBe(false);
    expect(() => createLoginCache({ ttlMs: -1 })).toThrow(RangeError);
    expect(() => createLoginCache({ ttlMs: Number.NaN })).toThrow(RangeError);
    expect(() => createLoginCache({ maxEntries: 0 })).toThrow(RangeError);
    expect(() => createLoginCache({ maxEntries: 1.5 })).toThrow(RangeError);
  });
});
