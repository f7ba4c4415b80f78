import { describe, expect, it } from "vitest";
import memoryAdapter, { createMemoryStore } from "../src/memory/index.js";
import { fromBytes } from "../src/streams.js";

describe("memory store", () => {
  it("is the adapter for memory: URLs, sharing data by name", async () => {
    expect(memoryAdapter.schemes).toEqual(["memory"]);
    const name = `readme${Date.now().toString(36)}`;
    const a = await memoryAdapter.open(`memory:${name}`);
    const b = await memoryAdapter.open(`memory:${name}`);
    const other = await memoryAdapter.open("memory:");
    await a.mailbox("x").append(fromBytes("Subject: shared\r\n\r\n"));
    expect(await b.mailbox("x").list()).toHaveLength(1);
    expect(await other.mailbox("x").list()).toHaveLength(0);
    expect(a.kind).toBe("memory");
    expect(a.capabilities).toEqual({ sharedAcrossProcesses: false, boundedMemory: false });
  });

  it("keeps stores without a namespace private", async () => {
    const a = createMemoryStore();
    const b = createMemoryStore();
    await a.directory.addDomain("example.test");
    expect(await b.directory.listDomains()).toEqual([]);
  });

  it("reports unavailable after close", async () => {
    const store = createMemoryStore();
    await store.close();
    await expect(store.ping()).rejects.toMatchObject({ code: "unavailable" });
  });
});
