// The command line of `pnpm bench`, checked before anything is started: a typo found after the
// reference servers are up and half an hour of runs are done wastes the whole sitting.
import { parseArgs } from "node:util";

export type StoreName = "fs" | "postgres" | "redis";
export type SuiteName = "smtp" | "pop3" | "idle" | "big";

export interface BenchOptions {
  readonly stores: readonly StoreName[];
  readonly suites: ReadonlySet<SuiteName>;
  readonly ref: boolean;
  readonly repeats: number;
  readonly quick: boolean;
  /** `[server] workers`: a whole number or "auto". */
  readonly workers: string;
  readonly idle: readonly number[];
  readonly settleSeconds: number;
  readonly refTools: string | undefined;
}

export const USAGE = `usage: pnpm bench [options]
  --store fs|postgres|redis|all   stores to measure, comma-separated (default fs)
  --suites smtp,pop3,idle,big     suites to run (default all four)
  --ref                           also measure Postfix + Dovecot and the Node smtp-server peer
  --repeats N                     runs per configuration (default 3)
  --settle SECONDS                quiet after a sync before each SMTP run (default 2, 0 = off)
  --quick                         fewer messages per run
  --workers N|auto                [server] workers of the Mailroom under test (default 1)
  --idle N,N,...                  connection counts of the idle suite (default 1000,5000,10000)
  --ref-tools DIR                 where the shared load drivers are (or MAILROOM_REF_TOOLS)
  --help                          this text`;

const STORES: readonly StoreName[] = ["fs", "postgres", "redis"];
const SUITES: readonly SuiteName[] = ["smtp", "pop3", "idle", "big"];

/** Thrown for a command line that cannot be run; the message names the option and what it takes. */
export class UsageError extends Error {}

/** The options of `argv`, or "help"; throws UsageError for anything it cannot run. */
export function parseBenchArgs(argv: readonly string[]): BenchOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        store: { type: "string", default: "fs" },
        suites: { type: "string", default: SUITES.join(",") },
        ref: { type: "boolean", default: false },
        repeats: { type: "string", default: "3" },
        quick: { type: "boolean", default: false },
        workers: { type: "string", default: "1" },
        idle: { type: "string", default: "1000,5000,10000" },
        settle: { type: "string", default: "2" },
        "ref-tools": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    // parseArgs says what was wrong ("Unknown option '--stores'"); the stack trace says nothing more.
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  if (values.help) return "help";
  const stores = values.store === "all" ? [...STORES] : listOf("--store", values.store, STORES);
  const suites = new Set(listOf("--suites", values.suites, SUITES));
  return {
    stores,
    suites,
    ref: values.ref,
    repeats: wholeNumber("--repeats", values.repeats, 1),
    quick: values.quick,
    workers: values.workers === "auto" ? "auto" : String(wholeNumber("--workers", values.workers, 1)),
    idle: values.idle.split(",").map((n) => wholeNumber("--idle", n.trim(), 1)),
    settleSeconds: seconds("--settle", values.settle),
    refTools: values["ref-tools"],
  };
}

function listOf<T extends string>(option: string, raw: string, known: readonly T[]): T[] {
  const items = raw.split(",").map((s) => s.trim());
  const unknown = items.filter((s) => !(known as readonly string[]).includes(s));
  if (unknown.length > 0) throw new UsageError(`${option}: ${unknown.map((s) => JSON.stringify(s)).join(", ")} is not one of ${known.join(", ")}`);
  // Each named once: a store listed twice would start two servers on the same ports.
  return [...new Set(items)] as T[];
}

function wholeNumber(option: string, raw: string, min: number): number {
  const value = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min) throw new UsageError(`${option} takes a whole number of at least ${min}, not ${JSON.stringify(raw)}`);
  return value;
}

function seconds(option: string, raw: string): number {
  const value = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isFinite(value)) throw new UsageError(`${option} takes seconds (0 or more), not ${JSON.stringify(raw)}`);
  return value;
}
