import { defineConfig } from "vitest/config";

export default defineConfig({
  test: { name: "scale-out", include: ["test/**/*.test.ts"], testTimeout: 90_000, hookTimeout: 60_000 },
});
