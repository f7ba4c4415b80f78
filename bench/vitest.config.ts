import { defineConfig } from "vitest/config";

// Only the command line's checks and the /proc readers: the benchmarks themselves are run by
// `pnpm bench`, never by the tests.
export default defineConfig({
  test: { name: "bench", include: ["test/**/*.test.ts"] },
});
