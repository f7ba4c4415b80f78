#!/usr/bin/env bash
# The whole test suite: build, type-check (lint), then every package's vitest tests in one run, then
# the runtime smoke tests. Prints the combined count as its last line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export TURBO_TELEMETRY_DISABLED=1
report=$(mktemp -d)/vitest.json
status=0

echo "== build and type-check" >&2
if ! pnpm exec turbo run build lint --output-logs=errors-only; then
  echo "build or type-check failed" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

echo "== tests" >&2
pnpm exec vitest run -c vitest.projects.config.ts --reporter=default --reporter=json --outputFile.json="$report" || status=1

node -e '
const fs = require("fs");
let passed = 0, failed = 0;
try {
  const r = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
  passed = r.numPassedTests; failed = r.numFailedTests;
} catch { failed = 1; }
// A file that failed to load has no failed test of its own: still count the run as failed.
if (process.argv[2] !== "0" && failed === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed`);
' "$report" "$status"
exit $status
