// pnpm bench [options] (see options.ts, or pnpm bench --help)
// Starts Mailroom from this checkout (and with --ref the reference Postfix + Dovecot and the Node
// smtp-server peer from shared/ref), runs the shared load drivers against each in the same sitting,
// and writes a table (summary.md) and JSON (summary.json) under bench/results/<stamp>/.
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseBenchArgs, UsageError, USAGE, type BenchOptions } from "./options.js";
import { renderReport } from "./report.js";
import { bigMessage, idleConnections, pop3Retrieve, smtpIngest, type SuiteContext } from "./suites.js";
import { mailroomTarget, nodePeerTarget, referenceTarget, type Target } from "./targets.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
let options: BenchOptions;
try {
  const parsed = parseBenchArgs(process.argv.slice(2));
  if (parsed === "help") {
    console.log(USAGE);
    process.exit(0);
  }
  options = parsed;
} catch (error) {
  if (!(error instanceof UsageError)) throw error;
  console.error(`bench: ${error.message}\n${USAGE}`);
  process.exit(2);
}

const sourceTools = options.refTools ?? process.env.MAILROOM_REF_TOOLS ?? join(repo, "../shared/ref");
if (!existsSync(join(sourceTools, "smtp_ingest.py"))) {
  console.error(`bench: the load drivers were not found in ${sourceTools} (set --ref-tools or MAILROOM_REF_TOOLS)`);
  process.exit(2);
}
const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "").replace("T", "_").toLowerCase();
const outDir = join(repo, "bench/results", stamp);
mkdirSync(outDir, { recursive: true });
// The peers install their npm packages beside themselves, so work on a writable copy.
const refTools = mkdtempSync(join(tmpdir(), "mailroom-ref-tools-"));
cpSync(sourceTools, refTools, { recursive: true });

const { stores, suites } = options;
const ctx: SuiteContext = {
  refTools,
  outDir,
  repeats: options.repeats,
  quick: options.quick,
  settleSeconds: options.settleSeconds,
  log: (message) => console.log(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}`),
};

const targets: Target[] = [];
const workDir = mkdtempSync(join(tmpdir(), "mailroom-bench-"));
const results: Record<string, unknown> = { stamp, stores, suites: [...suites], repeats: ctx.repeats, quick: ctx.quick, workers: options.workers };
try {
  for (const [i, store] of stores.entries()) {
    targets.push(await mailroomTarget({ repo, dir: join(workDir, store), store, basePort: 25000 + i * 1000, stamp, workers: options.workers }));
  }
  if (options.ref) {
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
  if (suites.has("idle")) results.idle = await idleConnections(ctx, targets, [...options.idle]);
} finally {
  for (const target of targets) await target.stop().catch(() => {});
  rmSync(workDir, { recursive: true, force: true });
  rmSync(refTools, { recursive: true, force: true });
}
writeFileSync(join(outDir, "summary.json"), `${JSON.stringify(results, null, 2)}\n`);
const table = renderReport(results);
writeFileSync(join(outDir, "summary.md"), table);
console.log(`\n${table}\nresults: ${outDir}`);
