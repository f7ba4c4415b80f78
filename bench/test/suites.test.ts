import { describe, expect, it } from "vitest";
import { messagesFor } from "../src/suites.js";

describe("messages per SMTP run", () => {
  it("sends the base count on one connection, three times it on 8 and four times it on 64", () => {
    expect([1, 8, 64].map((conns) => messagesFor(600, conns))).toEqual([600, 1_800, 2_400]);
    expect([1, 8, 64].map((conns) => messagesFor(1_500, conns))).toEqual([1_500, 4_500, 6_000]);
  });
});
