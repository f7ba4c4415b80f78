import { constants, promises as fsp } from "node:fs";
import { Buffer } from "node:buffer";
import { basename, join } from "node:path";
import { attempt, isErrno } from "./errors.js";
import { unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { BareLfCounter } from "./streams.js";

/** Small chunks (an SMTP DATA stream may yield line by line) are gathered up to this before one write. */
const WRITE_BATCH = 64 * 1024;
/** Only chunks smaller than this are gathered; larger ones are written straight from the source. */
const GATHER_BELOW = 16 * 1024;

async function writeAll(handle: fsp.FileHandle, path: string, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await attempt("write", path, () => handle.write(data, done, data.length - done, null));
    done += bytesWritten;
  }
}

/**
 * Sets the file's mtime through the open descriptor where the runtime offers it (no path lookup, and it
 * happens before the fsync, so the fsync covers it), else by path.
 */
async function setTimes(handle: fsp.FileHandle, path: string, when: Date): Promise<void> {
  const withFd = (handle as { utimes?: (a: Date, m: Date) => Promise<void> }).utimes;
  if (typeof withFd === "function") await attempt("utimes", path, () => withFd.call(handle, when, when));
  else await attempt("utimes", path, () => fsp.utimes(path, when, when));
}

/**
 * Streams `source` into a new file, counting octets and bare LFs; removes the file on any failure.
 * The file is complete, stamped with `receivedAt` and (with fsync on) durable when this resolves; the
 * caller still has to make its directory entry durable.
 */
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
      // Small chunks are gathered and written together. Each is copied as it comes (only its own
      // length), so a source that reuses its buffer for the next chunk cannot change what we write.
      let pending: Uint8Array[] = [];
      let staged = 0;
      const flushPending = async (): Promise<void> => {
        if (staged === 0) return;
        let data = pending[0]!;
        if (pending.length > 1) {
          data = new Uint8Array(staged);
          let at = 0;
          for (const part of pending) {
            data.set(part, at);
            at += part.length;
          }
        }
        pending = [];
        staged = 0;
        await writeAll(handle, path, data);
      };
      for await (const chunk of source) {
        counter.push(chunk);
        if (chunk.length === 0) continue;
        if (staged + chunk.length > WRITE_BATCH) await flushPending();
        if (chunk.length >= GATHER_BELOW) {
          // Big chunks go out as they are: copying them cost more (fresh ArrayBuffers, more GC) than
          // the write it would save.
          await flushPending();
          await writeAll(handle, path, chunk);
          continue;
        }
        // Buffer.from copies small chunks into Node's shared slab, which is nearly free.
        pending.push(Buffer.from(chunk));
        staged += chunk.length;
      }
      await flushPending();
      await setTimes(handle, path, new Date(receivedAt));
      if (policy.fsync) await attempt("fsync", path, () => handle.sync());
    } finally {
      await handle.close();
    }
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
