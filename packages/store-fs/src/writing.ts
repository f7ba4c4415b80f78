import { constants, promises as fsp } from "node:fs";
import { basename, join } from "node:path";
import { attempt, isErrno } from "./errors.js";
import { unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { BareLfCounter } from "./streams.js";

/** Streams `source` into a new file, counting octets and bare LFs; removes the file on any failure. */
export async function writeMessageFile(
  path: string,
  source: AsyncIterable<Uint8Array>,
  policy: SyncPolicy,
  receivedAt: number,
): Promise<{ size: number; crlfSize: number }> {
  const handle = await attempt("create", path, () => fsp.open(path, "wx"));
  const counter = new BareLfCounter();
  try {
    try {
      for await (const chunk of source) {
        counter.push(chunk);
        await attempt("write", path, () => handle.write(chunk));
      }
      if (policy.fsync) await attempt("fsync", path, () => handle.sync());
    } finally {
      await handle.close();
    }
    const when = new Date(receivedAt);
    await attempt("utimes", path, () => fsp.utimes(path, when, when));
  } catch (error) {
    await unlinkQuiet(path).catch(() => undefined);
    throw error;
  }
  return { size: counter.octets, crlfSize: counter.octets + counter.count };
}

/** Hard-links so an existing name is never replaced; falls back to a copy where links are impossible. */
export async function linkOrCopy(from: string, to: string, tmpDir: string, policy: SyncPolicy): Promise<void> {
  try {
    await fsp.link(from, to);
    return;
  } catch (error) {
    if (!isErrno(error, "EXDEV", "EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK")) throw error;
  }
  const copy = join(tmpDir, `${basename(to)}.copy`);
  try {
    await fsp.copyFile(from, copy, constants.COPYFILE_EXCL);
    const info = await fsp.stat(from);
    await fsp.utimes(copy, info.atime, info.mtime);
    if (policy.fsync) {
      const handle = await fsp.open(copy, "r+");
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    await fsp.rename(copy, to);
  } finally {
    await unlinkQuiet(copy).catch(() => undefined);
  }
}

/** Runs `fn` over `items` with at most `limit` calls in flight, keeping the order of results. */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
