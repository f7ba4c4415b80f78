// Micro-benchmark of the Maildir store (not a test). Runs against dist, so build first:
//   pnpm run build && node bench/append.mjs [--quick] [--only deliver|append|read] [--dir <path on the disk to measure>]
//   node bench/append.mjs --dist /path/to/other/dist     runs the same against another build
//   node bench/append.mjs --compare /path/to/old/dist    interleaved A/B of write configs, medians
// UV_THREADPOOL_SIZE=16 node bench/append.mjs   shows what a larger libuv pool changes.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    dir: { type: "string" },
    only: { type: "string" },
    // Another build of the package to compare with (e.g. the previous version's dist).
    dist: { type: "string" },
    // Interleaved A/B: each configuration runs `rounds` times alternating this build and the other one,
    // which keeps a busy shared machine's drifting load from favouring either side.
    compare: { type: "string" },
    rounds: { type: "string", default: "5" },
  },
});
const { createFsStore } = await import(args.dist ? pathToFileURL(join(resolve(args.dist), "index.js")).href : "../dist/index.js");

const CHUNK = 64 * 1024;

function message(size, seed) {
  const line = `X-Filler-${seed}: ${"abcdefghij".repeat(7)}\r\n`;
  let text = `Subject: bench ${seed}\r\nFrom: <a@bench.test>\r\n\r\n`;
  while (text.length + line.length <= size - 2) text += line;
  text += "x".repeat(Math.max(0, size - 2 - text.length)) + "\r\n";
  return new TextEncoder().encode(text);
}

// What an SMTP DATA handler hands over: the message in chunks of at most 64 KiB (a 4 KB message is one chunk).
async function* chunks(bytes) {
  for (let at = 0; at < bytes.length; at += CHUNK) yield bytes.subarray(at, at + CHUNK);
}

function cpuMs(since) {
  const d = process.cpuUsage(since);
  return (d.user + d.system) / 1000;
}

async function measure(total, concurrency, one) {
  let next = 0;
  const start = performance.now();
  const cpu = process.cpuUsage();
  const worker = async () => {
    while (next < total) await one(next++);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const ms = performance.now() - start;
  return { ms, cpu: cpuMs(cpu) };
}

if (args.compare) {
  const other = await import(pathToFileURL(join(resolve(args.compare), "index.js")).href);
  const sides = [
    ["new", createFsStore],
    ["old", other.createFsStore],
  ];
  const dir = await mkdtemp(join(args.dir ?? tmpdir(), "mailroom-bench-"));
  const rounds = Number(args.rounds);
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const out = [];
  console.log(`store-fs A/B: new=dist old=${args.compare}, ${rounds} rounds, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? "4 (default)"}`);
  try {
    const stores = {};
    for (const [name, create] of sides) stores[name] = await create({ root: join(dir, name), hostname: "bench.host" });
    for (const via of ["deliver", "append"]) {
      if (args.only && args.only !== via) continue;
      for (const size of [4 * 1024, 100 * 1024]) {
        const body = message(size, via);
        for (const concurrency of [1, 8, 64]) {
          const total = size <= 4096 ? (concurrency === 1 ? 150 : 600) : concurrency === 1 ? 60 : 200;
          const results = { new: [], old: [] };
          for (let r = 0; r < rounds; r++) {
            for (const [name] of r % 2 === 0 ? sides : [...sides].reverse()) {
              const store = stores[name];
              const id = `${via}-${size}-${concurrency}-${r}@bench.test`;
              const box = store.mailbox(id);
              for (let i = 0; i < 5; i++) await (via === "deliver" ? store.deliver([id], chunks(body)) : box.append(chunks(body)));
              const m = await measure(total, concurrency, () =>
                via === "deliver" ? store.deliver([id], chunks(body)) : box.append(chunks(body)),
              );
              results[name].push({ rate: (total / m.ms) * 1000, cpu: m.cpu / total });
              await rm(box.dir, { recursive: true, force: true });
            }
          }
          const row = { test: `${via} ${size / 1024} KB`, conc: concurrency };
          for (const name of ["old", "new"]) {
            row[`${name} msg/s`] = Math.round(median(results[name].map((x) => x.rate)));
            row[`${name} cpu ms/msg`] = +median(results[name].map((x) => x.cpu)).toFixed(3);
          }
          // Per-round ratio, then the median: robust against load that changes between rounds.
          row["speedup"] = +median(results.new.map((x, i) => x.rate / results.old[i].rate)).toFixed(2);
          row["cpu ratio"] = +median(results.new.map((x, i) => x.cpu / results.old[i].cpu)).toFixed(2);
          out.push(row);
          console.log(JSON.stringify(row));
        }
      }
    }
    console.table(out);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  process.exit(0);
}

const base = args.dir ?? tmpdir();
const root = await mkdtemp(join(base, "mailroom-bench-"));
const store = await createFsStore({ root, hostname: "bench.host" });
const rows = [];
console.log(`store-fs bench (${args.dist ?? "dist"}): node ${process.version}, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? "4 (default)"}, dir ${root}`);
try {
  const sizes = [4 * 1024, 100 * 1024];
  for (const via of ["deliver", "append"]) {
    if (args.only && args.only !== via) continue;
    for (const size of sizes) {
      const body = message(size, via);
      for (const concurrency of [1, 8, 64]) {
        const scale = args.quick ? 0.25 : 1;
        const total = Math.round((size <= 4096 ? (concurrency === 1 ? 400 : 2000) : concurrency === 1 ? 150 : 500) * scale);
        const id = `${via}-${size}-${concurrency}@bench.test`;
        const box = store.mailbox(id);
        // Warm up: creates the maildir and the JIT paths.
        for (let i = 0; i < 20; i++) {
          if (via === "deliver") await store.deliver([id], chunks(body));
          else await box.append(chunks(body));
        }
        const { ms, cpu } = await measure(total, concurrency, (i) =>
          via === "deliver" ? store.deliver([id], chunks(body)) : box.append(chunks(body)),
        );
        const row = {
          test: `${via} ${size / 1024} KB`,
          conc: concurrency,
          msgs: total,
          "msg/s": Math.round((total / ms) * 1000),
          "MB/s": +((total * size) / 1e6 / (ms / 1000)).toFixed(1),
          "cpu ms/msg": +(cpu / total).toFixed(3),
        };
        rows.push(row);
        console.log(JSON.stringify(row));
        await rm(box.dir ?? join(root, "bench.test"), { recursive: true, force: true }).catch(() => undefined);
      }
    }
  }
  if (!args.only || args.only === "read") {
    const id = "reader@bench.test";
    const box = store.mailbox(id);
    const count = 300;
    const size = 100 * 1024;
    const body = message(size, "read");
    await Promise.all(Array.from({ length: 8 }, async (_, w) => {
      for (let i = w; i < count; i += 8) await box.append(chunks(body));
    }));
    for (const round of ["cold store", "warm"]) {
      // The first round opens a new store instance, as a fresh POP3 process would (list must learn sizes).
      const reader = round === "cold store" ? (await createFsStore({ root, hostname: "bench.host" })).mailbox(id) : box;
      const start = performance.now();
      const cpu = process.cpuUsage();
      const list = await reader.list();
      let bytes = 0;
      for (const m of list) for await (const chunk of await reader.read(m.uid)) bytes += chunk.length;
      const ms = performance.now() - start;
      const row = {
        test: `read 100 KB (${round})`,
        conc: 1,
        msgs: list.length,
        "msg/s": Math.round((list.length / ms) * 1000),
        "MB/s": +(bytes / 1e6 / (ms / 1000)).toFixed(1),
        "cpu ms/msg": +(cpuMs(cpu) / list.length).toFixed(3),
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    }
  }
  console.table(rows);
} finally {
  await store.close();
  await rm(root, { recursive: true, force: true });
}
