/** The log itself failing (a full disk under it) must cost log lines, never the server. */
import { openSync, closeSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { createLogger } from "../src/logger.js";

describe("the log", () => {
  it("drops lines it cannot write (ENOSPC) instead of throwing at whoever logged", () => {
    const full = openSync("/dev/full", "w");
    try {
      const logger = createLogger("info", full);
      for (let i = 0; i < 1_000; i++) logger.info({ i, filler: "x".repeat(200) }, "a line the disk has no room for");
      logger.child({ session: "s1" }).error({}, "and an error after it");
      expect(() => logger.flush()).not.toThrow();
    } finally {
      closeSync(full);
    }
  });
});
