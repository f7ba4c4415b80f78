import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";

const run = promisify(execFile);

/** One opened store plus what removes every trace of it. */
export interface OpenedStore {
  readonly store: Store;
  dispose(): Promise<void>;
}

export interface Backend {
  readonly name: string;
  open(): Promise<OpenedStore>;
}

/**
 * The adapters are built by other packages of the workspace; one whose dist does not load yet (or
 * does not export its factory yet) is left out, so these tests start covering it as soon as it builds.
 * The specifier is a variable so that type-checking does not depend on those packages' state.
 */
async function load<T>(specifier: string, name: string): Promise<T | null> {
  try {
    const mod = (await import(specifier)) as Record<string, unknown>;
    return typeof mod[name] === "function" ? (mod[name] as T) : null;
  } catch {
    return null;
  }
}

const suffix = (): string => randomBytes(5).toString("hex");

export const PG_URL = process.env.MAILROOM_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const REDIS_URL = "redis://127.0.0.1:6379";

export const memoryBackend: Backend = {
  name: "memory",
  async open() {
    const store = createMemoryStore();
    return { store, dispose: () => store.close() };
  },
};

export async function availableBackends(): Promise<Backend[]> {
  const backends: Backend[] = [memoryBackend];

  const createFsStore = await load<(o: { root: string; fsync?: boolean }) => Promise<Store>>(
    "@mailroom/store-fs",
    "createFsStore",
  );
  if (createFsStore) {
    backends.push({
      name: "fs",
      async open() {
        const root = await mkdtemp(join(tmpdir(), "mr-copy-fs-"));
        const store = await createFsStore({ root, fsync: false });
        return {
          store,
          async dispose() {
            await store.close();
            await rm(root, { recursive: true, force: true });
          },
        };
      },
    });
  }

  const createPostgresStore = await load<(o: { url: string; schema: string }) => Promise<Store>>(
    "@mailroom/store-postgres",
    "createPostgresStore",
  );
  if (createPostgresStore) {
    backends.push({
      name: "postgres",
      async open() {
        const schema = `mr_copy_${suffix()}`;
        const store = await createPostgresStore({ url: PG_URL, schema });
        return {
          store,
          async dispose() {
            await store.close();
            await run("psql", [PG_URL, "-qc", `DROP SCHEMA IF EXISTS ${schema} CASCADE`], { timeout: 20_000 });
          },
        };
      },
    });
  }

  const createRedisStore = await load<(o: { url: string; prefix: string }) => Store | Promise<Store>>(
    "@mailroom/store-redis",
    "createRedisStore",
  );
  if (createRedisStore) {
    backends.push({
      name: "redis",
      async open() {
        const prefix = `mrtest:copy:${suffix()}:`;
        const store = await createRedisStore({ url: REDIS_URL, prefix });
        return {
          store,
          async dispose() {
            await store.close();
            await deleteRedisKeys(prefix);
          },
        };
      },
    });
  }
  return backends;
}

async function deleteRedisKeys(prefix: string): Promise<void> {
  const { stdout } = await run("redis-cli", ["-u", REDIS_URL, "--scan", "--pattern", `${prefix}*`], {
    timeout: 20_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  const keys = stdout.split("\n").filter((k) => k.length > 0);
  for (let i = 0; i < keys.length; i += 500) {
    await run("redis-cli", ["-u", REDIS_URL, "DEL", ...keys.slice(i, i + 500)], { timeout: 20_000 });
  }
}
