import { describe, expect, it } from "vitest";
import { createLoginThrottle, type LoginThrottleOptions } from "../src/throttle.js";

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

function throttle(options: LoginThrottleOptions = {}) {
  const c = clock();
  return { ...c, t: createLoginThrottle({ now: c.now, ...options }) };
}

describe("createLoginThrottle", () => {
  it("lets the first failures through without delay, then doubles it up to the maximum", () => {
    const { t } = throttle({ freeFailures: 3, baseDelayMs: 1000, maxDelayMs: 5000, refuseAfter: 100 });
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      delays.push(t.delayFor("10.0.0.1", "alice@example.test"));
      t.failure("10.0.0.1", "alice@example.test");
    }
    expect(delays).toEqual([0, 0, 0, 1000, 2000, 4000, 5000, 5000]);
  });

  it("uses its defaults: 3 free failures, 1 s, 15 s cap, refusal at 30", () => {
    const { t } = throttle();
    const delays: number[] = [];
    for (let i = 0; i < 31; i++) {
      delays.push(t.delayFor("10.0.0.1", "a@x.test"));
      t.failure("10.0.0.1", "a@x.test");
    }
    expect(delays.slice(0, 8)).toEqual([0, 0, 0, 1000, 2000, 4000, 8000, 15000]);
    expect(delays[29]).toBe(15000);
    expect(delays[30]).toBe(Infinity);
  });

  it("never delays a login without failures, also with no free failures", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(0);
    t.failure("10.0.0.1", "a@x.test");
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(200);
    expect(t.delayFor("10.0.0.2", "b@x.test")).toBe(0);
  });

  it("refuses outright after refuseAfter failures", () => {
    const { t } = throttle({ freeFailures: 0, refuseAfter: 3 });
    for (let i = 0; i < 3; i++) t.failure("10.0.0.1", "a@x.test");
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(Infinity);
  });

  it("counts per address and per login, across each other", () => {
    const { t } = throttle({ freeFailures: 1, baseDelayMs: 100 });
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(0);
    t.failure("10.0.0.1", "a@x.test");
    t.failure("10.0.0.1", "b@x.test");
    // The address has two failures: any login from it waits.
    expect(t.delayFor("10.0.0.1", "c@x.test")).toBe(200);
    // Login a has one failure: from elsewhere it waits the base delay only.
    expect(t.delayFor("10.0.0.2", "a@x.test")).toBe(100);
    t.failure("10.0.0.3", "a@x.test");
    // Login a now has two failures from two addresses: a distributed guess is slowed as much.
    expect(t.delayFor("10.0.0.4", "a@x.test")).toBe(200);
    expect(t.delayFor("10.0.0.4", "d@x.test")).toBe(0);
  });

  it("treats a login's case and surrounding spaces as the same login", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    t.failure("10.0.0.1", " Alice@Example.TEST ");
    expect(t.delayFor("10.0.0.9", "alice@example.test")).toBe(200);
  });

  it("counts every spelling that logs in to one account as that account", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    // Each of these reaches alice@example.test's account (authenticate normalises the same way):
    // a trailing dot, a fullwidth letter in the domain, a soft hyphen in it.
    t.failure("10.0.0.1", "alice@example.test.");
    t.failure("10.0.0.2", "alice@\uff45xample.test");
    t.failure("10.0.0.3", "alice@exam\u00adple.test");
    expect(t.delayFor("10.0.0.9", "alice@example.test")).toBe(800);
    // A good login clears the count whatever spelling it used.
    t.success("10.0.0.9", "ALICE@example.test.");
    expect(t.delayFor("10.0.0.9", "alice@example.test")).toBe(0);
    // A login that is not an address is still counted, by its own name.
    t.failure("10.0.0.1", "not an address");
    expect(t.delayFor("10.0.0.8", " NOT AN ADDRESS ")).toBe(200);
  });

  it("gives unknown logins the same answer as known ones", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    expect(t.delayFor("10.0.0.1", "nobody@x.test")).toBe(t.delayFor("10.0.0.1", "alice@x.test"));
    t.failure("10.0.0.1", "nobody@x.test");
    t.failure("10.0.0.2", "alice@x.test");
    expect(t.delayFor("10.0.0.5", "nobody@x.test")).toBe(t.delayFor("10.0.0.5", "alice@x.test"));
  });

  it("clears the login on success but not the address", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    t.failure("10.0.0.1", "a@x.test");
    t.failure("10.0.0.1", "a@x.test");
    t.success("10.0.0.1", "a@x.test");
    expect(t.delayFor("10.0.0.2", "a@x.test")).toBe(0);
    expect(t.delayFor("10.0.0.1", "b@x.test")).toBe(400);
  });

  it("forgets failures after the window without one", () => {
    const { t, advance } = throttle({ freeFailures: 0, baseDelayMs: 100, windowMs: 60_000 });
    t.failure("10.0.0.1", "a@x.test");
    advance(59_000);
    t.failure("10.0.0.1", "a@x.test");
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(400);
    advance(59_000);
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(400);
    advance(2_000);
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(0);
    t.failure("10.0.0.1", "a@x.test");
    expect(t.delayFor("10.0.0.1", "a@x.test")).toBe(200);
  });

  it("stays bounded under a flood of distinct keys", () => {
    const { t } = throttle({ freeFailures: 0, baseDelayMs: 100 });
    // Two keys per failure: 110,000 keys for a table of 100,000.
    for (let i = 0; i < 55_000; i++) t.failure(`10.0.${(i >> 8) & 255}.${i & 255}#${i}`, `u${i}@x.test`);
    expect(t.delayFor("10.0.214.215#54999", "nobody@x.test")).toBe(200);
    // The oldest ones made room.
    expect(t.delayFor("10.0.0.0#0", "u0@x.test")).toBe(0);
  });
});
