export interface Spread {
  median: number;
  min: number;
  max: number;
}

export function spread(values: readonly number[]): Spread | null {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return null;
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]! };
}

export function show(s: Spread | null, digits = 1): string {
  if (!s) return "-";
  const f = (v: number) => v.toFixed(digits);
  return `${f(s.median)} [${f(s.min)}–${f(s.max)}]`;
}

/** Parses the TSV rows the reference drivers write (header line first, `#` lines are summaries). */
export function parseTsv(text: string, header: readonly string[]): Record<string, string>[] {
  return text
    .split("\n")
    .filter((line) => line.trim() && !line.startsWith("#") && !line.startsWith(header[0]! + "\t"))
    .map((line) => {
      const cells = line.split("\t");
      return Object.fromEntries(header.map((name, i) => [name, cells[i] ?? ""]));
    });
}
