// pnpm bench [--store fs|postgres|redis|all] [--suites smtp,pop3,idle,big] [--ref] [--repeats N] [--quick] [--workers N|auto] [--settle S]
// Starts Mailroom from this checkout (and with --ref the reference Postfix + Dovecot and the Node
// smtp-server peer from shared/ref), runs the shared load drivers against each in the same sitting,
// and writes a table (summary.md) and JSON (summary.json) under bench/results/<stamp>/.
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { renderReport } from "./report.js";
import { bigMessage, idleConnections, pop3Retrieve, smtpIngest, type SuiteContext } from "./suites.js";
import { mailroomTarget, nodePeerTarget, referenceTarget, type Target } from "./targets.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const { values } = parseArgs({
  options: {
    store: { type: "string", default: "fs" },
    suites: { type: "string", default: "smtp,pop3,idle,big" },
    ref: { type: "boolean", default: false },
    repeats: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
    workers: { type: "string", default: "1" },
    idle: { type: "string", default: "1000,5000,10000" },
    settle: { type: "string", default: "2" },
    "ref-tools": { type: "string" },
  },
});

const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "").replace("T", "_").toLowerCase();
const outDir = join(repo, "bench/results", stamp);
mkdirSync(outDir, { recursive: true });
const sourceTools = values["ref-tools"] ?? process.env.MAILROOM_REF_TOOLS ?? join(repo, "../shared/ref");
if (!existsSync(join(sourceTools, "smtp_ingest.py"))) {
  console.error(`bench: the load drivers were not found in ${sourceTools} (set --ref-tools or MAILROOM_REF_TOOLS)`);
  process.exit(2);
}
// The peers install their npm packages beside themselves, so work on a writable copy.
const refTools = mkdtempSync(join(tmpdir(), "mailroom-ref-tools-"));
cpSync(sourceTools, refTools, { recursive: true });

if (!(Number(values.settle) >= 0)) {
  console.error(`bench: --settle takes seconds (0 or more), not ${JSON.stringify(values.settle)}`);
  process.exit(2);
}
const suites = new Set(values.suites.split(","));
const stores = (values.store === "all" ? ["fs", "postgres", "redis"] : values.store.split(",")) as Array<"fs" | "postgres" | "redis">;
const ctx: SuiteContext = {
  refTools,
  outDir,
  repeats: Number(values.repeats),
  quick: values.quick,
  settleSeconds: Number(values.settle),
  log: (message) => console.log(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}`),
};

const targets: Target[] = [];
const workDir = mkdtempSync(join(tmpdir(), "mailroom-bench-"));
const results: Record<string, unknown> = { stamp, stores, suites: [...suites], repeats: ctx.repeats, quick: ctx.quick, workers: values.workers };
try {
  for (const [i, store] of stores.entries()) {
    targets.push(await mailroomTarget({ repo, dir: join(workDir, store), store, basePort: 25000 + i * 1000, stamp, workers: values.workers }));
  }
  if (values.ref) {
    targets.push(await referenceTarget(refTools));
    targets.push(await nodePeerTarget(refTools));
  }
  if (suites.has("smtp")) results.smtp = smtpIngest(ctx, targets);
  if (suites.has("pop3")) results.pop3 = pop3Retrieve(ctx, targets);
  if (suites.has("big")) {
    results.big = [];
    for (const target of targets.filter((t) => t.label.startsWith("mailroom"))) {
      const big = await bigMessage(ctx, target);
      ctx.log(`big message: ${JSON.stringify(big)}`);
      (results.big as unknown[]).push(big);
    }
  }
  if (suites.has("idle")) results.idle = await idleConnections(ctx, targets, values.idle.split(",").map(Number));
} finally {
  for (const target of targets) await target.stop().catch(() => {});
  rmSync(workDir, { recursive: true, force: true });
  rmSync(refTools, { recursive: true, force: true });
}
writeFileSync(join(outDir, "summary.json"), `${JSON.stringify(results, null, 2)}\n`);
const table = renderReport(results);
writeFileSync(join(outDir, "summary.md"), table);
console.log(`\n${table}\nresults: ${outDir}`);
