import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";
import { fromBytes, readAll, type Store } from "@mailroom/store";
import { createFsStore } from "../src/index.js";

const decoder = new TextDecoder();

/** A fresh temp root per test file, removed afterwards. */
export async function tempRoot(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `mailroom-store-fs-${prefix}-`));
  afterAll(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export async function openStore(root: string): Promise<Store> {
  return createFsStore({ root, fsync: false, hostname: "test.host" });
}

export const text = (s: string) => fromBytes(s);

export async function readText(stream: AsyncIterable<Uint8Array> | Promise<AsyncIterable<Uint8Array>>): Promise<string> {
  return decoder.decode(await readAll(await stream));
}
