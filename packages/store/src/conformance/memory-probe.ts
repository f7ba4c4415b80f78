/**
 * Measures how much memory a store keeps while a big message streams through it.
 *
 * What counts is memory the store holds on to, not garbage it made and dropped: a driver that turns
 * every row into a hex string and then a Buffer (pg does) makes three times the message in garbage,
 * all of it collectable. So the probe collects garbage after every megabyte that passes and records the
 * highest heap + array-buffer use seen. What is left is the store's working set plus at most about a
 * megabyte's worth of fresh garbage, which makes the budget a statement about the store, not about
 * when V8 chose to collect.
 */
type Gc = () => void;

/** How many octets pass between two collections. */
const GC_EVERY = 1024 * 1024;

/** `--expose-gc` gives a collector directly; on Node it can also be switched on at run time. */
async function findGc(): Promise<Gc | undefined> {
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") return exposed as Gc;
  try {
    const v8 = await import("node:v8");
    const vm = await import("node:vm");
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as unknown;
    return typeof gc === "function" ? (gc as Gc) : undefined;
  } catch {
    return undefined;
  }
}

function used(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

export class MemoryProbe {
  #baseline = 0;
  #peak = 0;
  #since = 0;
  private constructor(private readonly gc: Gc | undefined) {}

  static async create(): Promise<MemoryProbe> {
    return new MemoryProbe(await findGc());
  }

  start(): void {
    this.gc?.();
    this.#baseline = used();
    this.#peak = this.#baseline;
    this.#since = 0;
  }

  /** Call as octets pass (in either direction). */
  sample(octets: number): void {
    this.#since += octets;
    if (this.gc && this.#since >= GC_EVERY) {
      this.gc();
      this.#since = 0;
    }
    this.#peak = Math.max(this.#peak, used());
  }

  /** Highest use seen since `start`, above what was in use at `start`. */
  get growth(): number {
    return this.#peak - this.#baseline;
  }
}

export const megabytes = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`;
