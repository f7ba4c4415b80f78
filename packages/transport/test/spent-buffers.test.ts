import { afterEach, describe, expect, it } from "vitest";
import { findCollector, noteSpentBytes, useCollector } from "../src/spent-buffers.js";

const MiB = 1024 * 1024;

afterEach(() => useCollector(undefined));

describe("spent buffers", () => {
  it("asks for one collection per 8 MiB moved, across calls of any size", () => {
    let collections = 0;
    useCollector(() => collections++);
    for (let i = 0; i < 3; i++) noteSpentBytes(3 * MiB);
    expect(collections).toBe(1);
    noteSpentBytes(64 * 1024);
    expect(collections).toBe(1);
    for (let i = 0; i < 512; i++) noteSpentBytes(16 * 1024);
    expect(collections).toBe(2);
  });

  it("finds a way to collect on Node without any command-line flag, and collecting works", () => {
    const collect = findCollector();
    expect(collect).not.toBeNull();
    collect!();
    collect!();
  });

  it("without a collector, counting is all that happens", () => {
    useCollector(null);
    expect(() => noteSpentBytes(100 * MiB)).not.toThrow();
  });
});
