import { describe, expect, it } from "vitest";
import type { Directory } from "@mailroom/store";
import { PostmasterLookup } from "../src/policy.js";
import { seededStore } from "./helpers.js";

/** The directory with listDomains counted (one per search) and made to fail on demand. */
function searches(directory: Directory): { directory: Directory; count: () => number; fail: (on: boolean) => void } {
  let count = 0;
  let failing = false;
  const wrapped = Object.create(directory) as Directory;
  Object.defineProperty(wrapped, "listDomains", {
    value: async () => {
      count++;
      if (failing) throw new Error("db down");
      return directory.listDomains();
    },
  });
  return { directory: wrapped, count: () => count, fail: (on) => (failing = on) };
}

describe("PostmasterLookup", () => {
  it("searches once per period, shares a search between callers, and searches again after forget()", async () => {
    const store = await seededStore();
    const s = searches(store.directory);
    let now = 0;
    const lookup = new PostmasterLookup(s.directory, "mx.local.test", { ttlMs: 60_000, now: () => now });
    const at = await Promise.all([lookup.address(), lookup.address(), lookup.address()]);
    expect(at).toEqual(["postmaster@local.test", "postmaster@local.test", "postmaster@local.test"]);
    expect(s.count()).toBe(1);
    now = 59_999;
    expect(await lookup.address()).toBe("postmaster@local.test");
    expect(s.count()).toBe(1);
    now = 60_000;
    await store.directory.removeAlias("postmaster@local.test");
    await store.directory.addAlias({ source: "postmaster@other-local.test", target: "carol@other-local.test" });
    expect(await lookup.address()).toBe("postmaster@other-local.test");
    expect(s.count()).toBe(2);
    lookup.forget();
    expect(await lookup.address()).toBe("postmaster@other-local.test");
    expect(s.count()).toBe(3);
  });

  it("remembers that there is no postmaster, and does not remember a failed search", async () => {
    const store = await seededStore();
    await store.directory.removeAlias("postmaster@local.test");
    const s = searches(store.directory);
    const lookup = new PostmasterLookup(s.directory, "mx.local.test", { now: () => 0 });
    s.fail(true);
    await expect(lookup.address()).rejects.toThrow("db down");
    s.fail(false);
    expect(await lookup.address()).toBeNull();
    expect(await lookup.address()).toBeNull();
    expect(s.count()).toBe(2);
  });

  it("takes the host name's own postmaster first", async () => {
    const store = await seededStore();
    await store.directory.addDomain("mx.local.test");
    await store.directory.addAlias({ source: "postmaster@mx.local.test", target: "alice@local.test" });
    expect(await new PostmasterLookup(store.directory, "mx.local.test").address()).toBe("postmaster@mx.local.test");
  });
});
