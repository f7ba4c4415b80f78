import { defineConfig } from "vitest/config";

// Named so that a package's own `vitest run` does not pick it up (vitest searches upward for vitest.config.*).
export default defineConfig({
  test: { projects: ["packages/*", "apps/*", "tests/*", "bench"], passWithNoTests: false },
});
