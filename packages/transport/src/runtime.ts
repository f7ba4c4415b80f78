export type RuntimeName = "node" | "bun" | "deno";

/** Which runtime runs us. Bun and Deno report a Node-like `process.version`, so look at their globals. */
export function runtimeName(): RuntimeName {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  if (g.Bun !== undefined) return "bun";
  if (g.Deno !== undefined) return "deno";
  return "node";
}
