import { describe, expect, it } from "vitest";
import type { Directory } from "../src/contract.js";
import { StoreError } from "../src/errors.js";
import { createMemoryStore } from "../src/memory/index.js";
import { resolveRecipient } from "../src/recipients.js";

async function setup(): Promise<Directory> {
  const d = createMemoryStore().directory;
  await d.addDomain("example.test");
  await d.addDomain("second.test");
  for (const address of ["alice@example.test", "bob@example.test", "carol@second.test"]) {
    await d.addAccount({ address, passwordHash: "$scrypt$unused" });
  }
  return d;
}

async function mailboxes(d: Directory, address: string): Promise<string[] | string> {
  const r = await resolveRecipient(d, address);
  return r.kind === "local" ? [...r.mailboxes].sort() : r.kind;
}

describe("resolveRecipient", () => {
  it("finds an account by any spelling of its address", async () => {
    const d = await setup();
    expect(await mailboxes(d, "Alice@EXAMPLE.test")).toEqual(["alice@example.test"]);
  });

  it("answers not-local for foreign domains and malformed addresses, unknown for local strangers", async () => {
    const d = await setup();
    expect(await mailboxes(d, "alice@foreign.test")).toBe("not-local");
    expect(await mailboxes(d, "user%other@example.test")).toBe("not-local");
    expect(await mailboxes(d, "<alice@example.test>")).toBe("not-local");
    expect(await mailboxes(d, "")).toBe("not-local");
    expect(await mailboxes(d, "nobody@example.test")).toBe("unknown");
  });

  it("expands aliases to several accounts, removing duplicates", async () => {
    const d = await setup();
    await d.addAlias({ source: "team@example.test", target: "alice@example.test" });
    await d.addAlias({ source: "team@example.test", target: "bob@example.test" });
    await d.addAlias({ source: "team@example.test", target: "all@example.test" });
    await d.addAlias({ source: "all@example.test", target: "alice@example.test" });
    await d.addAlias({ source: "all@example.test", target: "carol@second.test" });
    expect(await mailboxes(d, "team@example.test")).toEqual(["alice@example.test", "bob@example.test", "carol@second.test"]);
  });

  it("keeps a copy for an account that is also an alias source", async () => {
    const d = await setup();
    await d.addAlias({ source: "alice@example.test", target: "bob@example.test" });
    expect(await mailboxes(d, "alice@example.test")).toEqual(["alice@example.test", "bob@example.test"]);
  });

  it("ignores foreign targets, and is unknown when only foreign targets remain", async () => {
    const d = await setup();
    await d.addAlias({ source: "fwd@example.test", target: "someone@foreign.test" });
    await d.addAlias({ source: "mixed@example.test", target: "someone@foreign.test" });
    await d.addAlias({ source: "mixed@example.test", target: "bob@example.test" });
    expect(await mailboxes(d, "fwd@example.test")).toBe("unknown");
    expect(await mailboxes(d, "mixed@example.test")).toEqual(["bob@example.test"]);
  });

  it("uses a catch-all only when no account or exact alias exists", async () => {
    const d = await setup();
    await d.addAlias({ source: "@example.test", target: "bob@example.test" });
    await d.addAlias({ source: "info@example.test", target: "carol@second.test" });
    expect(await mailboxes(d, "random@example.test")).toEqual(["bob@example.test"]);
    expect(await mailboxes(d, "alice@example.test")).toEqual(["alice@example.test"]);
    expect(await mailboxes(d, "info@example.test")).toEqual(["carol@second.test"]);
    expect(await mailboxes(d, "random@second.test")).toBe("unknown");
  });

  it("follows a catch-all reached through an alias", async () => {
    const d = await setup();
    await d.addAlias({ source: "x@example.test", target: "whoever@second.test" });
    await d.addAlias({ source: "@second.test", target: "carol@second.test" });
    expect(await mailboxes(d, "x@example.test")).toEqual(["carol@second.test"]);
  });

  it("ends loops, keeping the accounts met on the way", async () => {
    const d = await setup();
    await d.addAlias({ source: "l1@example.test", target: "l2@example.test" });
    await d.addAlias({ source: "l2@example.test", target: "l1@example.test" });
    await d.addAlias({ source: "self@example.test", target: "self@example.test" });
    await d.addAlias({ source: "l2@example.test", target: "alice@example.test" });
    expect(await mailboxes(d, "l1@example.test")).toEqual(["alice@example.test"]);
    expect(await mailboxes(d, "self@example.test")).toBe("unknown");
  });

  it("follows chains up to eight hops and gives up beyond", async () => {
    const d = await setup();
    const chain = async (name: string, hops: number): Promise<void> => {
      for (let i = 0; i < hops - 1; i++) await d.addAlias({ source: `${name}${i}@example.test`, target: `${name}${i + 1}@example.test` });
      await d.addAlias({ source: `${name}${hops - 1}@example.test`, target: "alice@example.test" });
    };
    await chain("short", 8);
    await chain("long", 9);
    expect(await mailboxes(d, "short0@example.test")).toEqual(["alice@example.test"]);
    expect(await mailboxes(d, "long0@example.test")).toBe("unknown");
  });

  it("passes directory failures on instead of calling the address unknown", async () => {
    const d = await setup();
    const failing: Directory = Object.assign(Object.create(Object.getPrototypeOf(d) as object) as Directory, d, {
      aliasTargets: async (): Promise<readonly string[]> => {
        throw new StoreError("unavailable", "down");
      },
    });
    await expect(resolveRecipient(failing, "nobody@example.test")).rejects.toMatchObject({ code: "unavailable" });
  });
});
