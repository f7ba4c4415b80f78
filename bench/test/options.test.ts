import { describe, expect, it } from "vitest";
import { parseBenchArgs, UsageError } from "../src/options.js";

function refused(argv: string[]): string {
  try {
    parseBenchArgs(argv);
  } catch (error) {
    if (error instanceof UsageError) return error.message;
    throw error;
  }
  throw new Error(`accepted ${argv.join(" ")}`);
}

describe("pnpm bench's command line", () => {
  it("runs every suite on store-fs without the reference servers by default", () => {
    expect(parseBenchArgs([])).toEqual({
      stores: ["fs"],
      suites: new Set(["smtp", "pop3", "idle", "big"]),
      ref: false,
      repeats: 3,
      quick: false,
      workers: "1",
      idle: [1000, 5000, 10000],
      settleSeconds: 2,
      refTools: undefined,
    });
  });

  it("takes every option the README lists", () => {
    const options = parseBenchArgs([
      "--store", "all", "--suites", "smtp,big", "--ref", "--repeats", "5", "--quick", "--workers", "auto",
      "--idle", "100, 200", "--settle", "0.5", "--ref-tools", "/srv/ref",
    ]);
    expect(options).toEqual({
      stores: ["fs", "postgres", "redis"],
      suites: new Set(["smtp", "big"]),
      ref: true,
      repeats: 5,
      quick: true,
      workers: "auto",
      idle: [100, 200],
      settleSeconds: 0.5,
      refTools: "/srv/ref",
    });
    expect(parseBenchArgs(["--store", "redis,fs,redis", "--workers", "2"])).toMatchObject({ stores: ["redis", "fs"], workers: "2" });
  });

  it("answers --help and -h with the usage", () => {
    expect(parseBenchArgs(["--help"])).toBe("help");
    expect(parseBenchArgs(["-h", "--store", "nonsense"])).toBe("help");
  });

  it("names the option and what it takes when a value is wrong", () => {
    expect(refused(["--stores", "fs"])).toMatch(/Unknown option '--stores'/);
    expect(refused(["fs"])).toMatch(/positional/i);
    expect(refused(["--store", "sqlite"])).toBe('--store: "sqlite" is not one of fs, postgres, redis');
    expect(refused(["--suites", "smtp,imap"])).toBe('--suites: "imap" is not one of smtp, pop3, idle, big');
    expect(refused(["--repeats", "0"])).toBe('--repeats takes a whole number of at least 1, not "0"');
    expect(refused(["--repeats", "three"])).toBe('--repeats takes a whole number of at least 1, not "three"');
    expect(refused(["--workers=-1"])).toBe('--workers takes a whole number of at least 1, not "-1"');
    expect(refused(["--idle", "1000,lots"])).toBe('--idle takes a whole number of at least 1, not "lots"');
    expect(refused(["--settle=-2"])).toBe('--settle takes seconds (0 or more), not "-2"');
    expect(refused(["--workers", "-1"])).toMatch(/ambiguous/);
  });
});
