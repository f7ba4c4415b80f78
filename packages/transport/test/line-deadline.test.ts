import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { LineDeadline } from "../src/line-deadline.js";

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

describe("LineDeadline", () => {
  let fired = 0;
  let deadline: LineDeadline;

  beforeEach(() => {
    vi.useFakeTimers();
    fired = 0;
    deadline = new LineDeadline(() => fired++);
    deadline.set(1000);
  });

  afterEach(() => {
    deadline.stop();
    vi.useRealTimers();
  });

  it("fires when a begun line has not ended within the limit, however often bytes arrive", () => {
    for (let i = 0; i < 9; i++) {
      deadline.observe(bytes("x"));
      vi.advanceTimersByTime(100);
    }
    expect(fired).toBe(0);
    vi.advanceTimersByTime(150);
    expect(fired).toBe(1);
  });

  it("never fires for reads that end with a line end", () => {
    for (let i = 0; i < 10; i++) {
      deadline.observe(bytes("NOOP\r\n"));
      vi.advanceTimersByTime(900);
    }
    expect(fired).toBe(0);
  });

  it("a read that ends the pending line and begins another gives the new line the whole limit", () => {
    deadline.observe(bytes("NO"));
    vi.advanceTimersByTime(900);
    deadline.observe(bytes("OP\r\nST"));
    vi.advanceTimersByTime(900);
    expect(fired).toBe(0);
    vi.advanceTimersByTime(200);
    expect(fired).toBe(1);
  });

  it("a line ended in time stops the clock", () => {
    deadline.observe(bytes("NO"));
    vi.advanceTimersByTime(900);
    deadline.observe(bytes("OP\r\n"));
    vi.advanceTimersByTime(5000);
    expect(fired).toBe(0);
  });

  it("time spent with reading paused does not count; after resume the line has the whole limit", () => {
    deadline.observe(bytes("DA"));
    deadline.pause();
    vi.advanceTimersByTime(5000);
    expect(fired).toBe(0);
    deadline.resume();
    vi.advanceTimersByTime(900);
    expect(fired).toBe(0);
    vi.advanceTimersByTime(200);
    expect(fired).toBe(1);
  });

  it("0 turns it off and forgets the pending line (binary input)", () => {
    deadline.observe(bytes("BDAT 100 LAST\r\nbinary"));
    deadline.set(0);
    deadline.observe(bytes("more binary"));
    vi.advanceTimersByTime(10_000);
    expect(fired).toBe(0);
    deadline.set(1000);
    deadline.observe(bytes("QU"));
    vi.advanceTimersByTime(1100);
    expect(fired).toBe(1);
  });
});
