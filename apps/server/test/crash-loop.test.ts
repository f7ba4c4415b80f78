/** When the primary gives up on its workers: a burst of young deaths, not a few spread over weeks. */
import { describe, expect, it } from "vitest";
import { isCrashLoop } from "../src/cluster.js";

describe("the crash-loop limit", () => {
  it("stops at the sixth young death within a minute", () => {
    const deaths: number[] = [];
    const verdicts = [0, 1, 2, 3, 4, 5].map((i) => isCrashLoop(deaths, 10_000 + i * 3_000, 12_000 + i * 3_000));
    expect(verdicts).toEqual([false, false, false, false, false, true]);
  });

  it("forgets young deaths older than a minute, and never counts a worker that lived past 10 s", () => {
    const deaths: number[] = [];
    const day = 86_400_000;
    // Six young deaths, one a day: each is alone in its minute.
    for (let i = 0; i < 6; i++) expect(isCrashLoop(deaths, i * day, i * day + 2_000)).toBe(false);
    // Many deaths of workers that ran a while are no crash loop at all.
    for (let i = 0; i < 10; i++) expect(isCrashLoop(deaths, 7 * day + i * 1_000, 7 * day + i * 1_000 + 20_000)).toBe(false);
  });
});
