import { describe, expect, it } from "vitest";
import type { Account, Directory } from "../src/contract.js";
import { StoreError } from "../src/errors.js";
import { createMemoryStore } from "../src/memory/index.js";
import { createLoginCache, type LoginCache } from "../src/logincache.js";
import { authenticate, hashPassword, isPasswordHash, verifyPassword } from "../src/password.js";

const PHC = /^\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

describe("hashPassword and verifyPassword", () => {
  it("makes a PHC scrypt string with default parameters, salted", async () => {
    const hash = await hashPassword("hunter2");
    const m = PHC.exec(hash);
    expect(m, hash).not.toBeNull();
    expect([m![1], m![2], m![3]]).toEqual(["15", "8", "1"]);
    expect(Buffer.from(m![4]!, "base64")).toHaveLength(16);
    expect(Buffer.from(m![5]!, "base64")).toHaveLength(32);
    expect(hash).not.toContain("hunter2");
    expect(await hashPassword("hunter2")).not.toBe(hash);
    expect(isPasswordHash(hash)).toBe(true);
  });

  it("carries custom parameters in the hash", async () => {
    const hash = await hashPassword("pw", { logN: 10, r: 4, p: 2 });
    expect(hash.startsWith("$scrypt$ln=10,r=4,p=2$")).toBe(true);
    expect(await verifyPassword("pw", hash)).toBe(true);
  });

  it("verifies the right password and refuses a wrong one", async () => {
    const hash = await hashPassword("correct horse", { logN: 10 });
    expect(await verifyPassword("correct horse", hash)).toBe(true);
    expect(await verifyPassword("correct horse ", hash)).toBe(false);
    expect(await verifyPassword("Correct horse", hash)).toBe(false);
    expect(await verifyPassword("", hash)).toBe(false);
  });

  it("treats composed and decomposed Unicode as the same password", async () => {
    const hash = await hashPassword("caf\u00e9", { logN: 10 });
    expect(await verifyPassword("cafe\u0301", hash)).toBe(true);
  });

  it("answers false for malformed or foreign hashes instead of throwing", async () => {
    const good = await hashPassword("pw", { logN: 10 });
    const malformed = [
      "",
      "pw",
      "$2b$10$abcdefghijklmnopqrstuu5Lr2yQ0Tn8aSYQbN9.9hN1RZ5nZ1uG",
      "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
      "$scrypt$ln=15,r=8,p=1$$",
      "$scrypt$ln=15,r=8,p=1$c2FsdA",
      good.replace("ln=10", "ln=40"),
      good.replace("ln=10", "ln=5"),
      good.replace("r=8", "r=99"),
      good.replace("p=1", "p=0"),
      `${good}$extra`,
      good.replace(/\$[^$]+$/, "$***"),
    ];
    for (const hash of malformed) {
      expect(isPasswordHash(hash), hash).toBe(false);
      expect(await verifyPassword("pw", hash), hash).toBe(false);
    }
  });

  it("refuses a hash whose key was cut short", async () => {
    const good = await hashPassword("pw", { logN: 10 });
    expect(await verifyPassword("pw", good.slice(0, -8))).toBe(false);
  });
});

describe("authenticate", () => {
  async function directoryWith(password: string, logN?: number): Promise<Directory> {
    const store = createMemoryStore();
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({
      address: "alice@example.test",
      passwordHash: await hashPassword(password, logN === undefined ? {} : { logN }),
    });
    return store.directory;
  }

  it("returns the account for the right password, whatever the login's case", async () => {
    const directory = await directoryWith("secret", 10);
    expect((await authenticate(directory, "alice@example.test", "secret"))?.address).toBe("alice@example.test");
    expect((await authenticate(directory, "  ALICE@Example.Test ", "secret"))?.address).toBe("alice@example.test");
  });

  it("returns null for a wrong password, an unknown login and a malformed login", async () => {
    const directory = await directoryWith("secret", 10);
    expect(await authenticate(directory, "alice@example.test", "Secret")).toBeNull();
    expect(await authenticate(directory, "nobody@example.test", "secret")).toBeNull();
    expect(await authenticate(directory, "nobody@other.test", "secret")).toBeNull();
    expect(await authenticate(directory, "not an address", "secret")).toBeNull();
    expect(await authenticate(directory, "a\r\nb@example.test", "secret")).toBeNull();
  });

  it("returns null for an account whose stored hash is malformed", async () => {
    const store = createMemoryStore();
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({ address: "old@example.test", passwordHash: "{PLAIN}secret" });
    expect(await authenticate(store.directory, "old@example.test", "secret")).toBeNull();
    expect(await authenticate(store.directory, "old@example.test", "{PLAIN}secret")).toBeNull();
  });

  it("spends about as long on an unknown login as on a wrong password", async () => {
    const directory = await directoryWith("secret");
    // Warm up: the first unknown login also computes the dummy hash.
    await authenticate(directory, "warmup@example.test", "x");
    const time = async (login: string): Promise<number> => {
      const samples: number[] = [];
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        expect(await authenticate(directory, login, "wrong")).toBeNull();
        samples.push(performance.now() - started);
      }
      return samples.sort((a, b) => a - b)[1]!;
    };
    const known = await time("alice@example.test");
    const unknown = await time("nobody@example.test");
    const malformed = await time("not an address");
    expect(unknown).toBeGreaterThan(known * 0.4);
    expect(malformed).toBeGreaterThan(known * 0.4);
  });

  /** Median time of `runs` failed logins as `login`. */
  async function medianFailure(directory: Directory, login: string, runs = 5): Promise<number> {
    const samples: number[] = [];
    for (let i = 0; i < runs; i++) {
      const started = performance.now();
      expect(await authenticate(directory, login, "wrong")).toBeNull();
      samples.push(performance.now() - started);
    }
    return samples.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
  }

  it("spends about as long on an unknown login as on a wrong password when the accounts use cheaper parameters", async () => {
    // logN 11 is a sixteenth of the default's work: an unknown login checked against a default-cost
    // dummy would take about sixteen times as long as a wrong password for a real account.
    const directory = await directoryWith("secret", 11);
    await authenticate(directory, "alice@example.test", "wrong");
    await authenticate(directory, "warmup@example.test", "x");
    const known = await medianFailure(directory, "alice@example.test");
    const unknown = await medianFailure(directory, "nobody@example.test");
    expect(unknown).toBeLessThan(known * 5);
    expect(unknown).toBeGreaterThan(known * 0.3);
  });

  it("spends about as long on an account whose stored hash cannot be checked as on a wrong password", async () => {
    const store = createMemoryStore();
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({ address: "alice@example.test", passwordHash: await hashPassword("secret") });
    await store.directory.addAccount({ address: "locked@example.test", passwordHash: "!locked" });
    await authenticate(store.directory, "alice@example.test", "wrong");
    await authenticate(store.directory, "warmup@example.test", "x");
    const known = await medianFailure(store.directory, "alice@example.test", 3);
    const locked = await medianFailure(store.directory, "locked@example.test", 3);
    expect(locked).toBeGreaterThan(known * 0.4);
  });

  it("with a login cache: takes a right password from it the second time, never a wrong one", async () => {
    const directory = await directoryWith("secret", 10);
    const inner = createLoginCache();
    const hits: boolean[] = [];
    const cache: LoginCache = {
      has: (hash, password) => {
        const hit = inner.has(hash, password);
        hits.push(hit);
        return hit;
      },
      add: (hash, password) => inner.add(hash, password),
    };
    expect(await authenticate(directory, "alice@example.test", "wrong", cache)).toBeNull();
    expect((await authenticate(directory, "alice@example.test", "secret", cache))?.address).toBe("alice@example.test");
    expect((await authenticate(directory, "ALICE@example.test", "secret", cache))?.address).toBe("alice@example.test");
    expect(await authenticate(directory, "alice@example.test", "wrong", cache)).toBeNull();
    expect(await authenticate(directory, "nobody@example.test", "secret", cache)).toBeNull();
    // Miss, miss (then the scrypt check passes and is remembered), hit, miss; unknown logins never ask.
    expect(hits).toEqual([false, false, true, false]);
  });

  it("with a login cache: a changed password and a removed account take effect at once", async () => {
    const directory = await directoryWith("old password", 10);
    const cache = createLoginCache();
    expect(await authenticate(directory, "alice@example.test", "old password", cache)).not.toBeNull();
    await directory.setPasswordHash("alice@example.test", await hashPassword("new password", { logN: 10 }));
    expect(await authenticate(directory, "alice@example.test", "old password", cache)).toBeNull();
    expect(await authenticate(directory, "alice@example.test", "new password", cache)).not.toBeNull();
    await directory.removeAccount("alice@example.test");
    expect(await authenticate(directory, "alice@example.test", "new password", cache)).toBeNull();
  });

  it("with a login cache: a wrong password still costs about what an unknown login does", async () => {
    const directory = await directoryWith("secret");
    const cache = createLoginCache();
    expect(await authenticate(directory, "alice@example.test", "secret", cache)).not.toBeNull();
    await authenticate(directory, "warmup@example.test", "x", cache);
    const time = async (login: string): Promise<number> => {
      const samples: number[] = [];
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        expect(await authenticate(directory, login, "wrong", cache)).toBeNull();
        samples.push(performance.now() - started);
      }
      return samples.sort((a, b) => a - b)[1]!;
    };
    const cachedAccount = await time("alice@example.test");
    const unknown = await time("nobody@example.test");
    expect(cachedAccount).toBeGreaterThan(unknown * 0.4);
  });

  it("throws store failures instead of reporting a wrong password", async () => {
    const failing: Directory = {
      ...createMemoryStore().directory,
      getAccount: async (): Promise<Account | null> => {
        throw new StoreError("unavailable", "database is down");
      },
    };
    await expect(authenticate(failing, "alice@example.test", "secret")).rejects.toMatchObject({ code: "unavailable" });
  });
});
