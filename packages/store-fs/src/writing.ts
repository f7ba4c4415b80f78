import { constants, fstatSync, promises as fsp } from "node:fs";
import { Buffer } from "node:buffer";
import { basename, join } from "node:path";
import { attempt, isErrno } from "./errors.js";
import { unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { BareLfCounter } from "./streams.js";
import { closeFd, fsyncFd, openNew, setTimesFd, writeSome } from "./fdio.js";
import type { KeptBody } from "./deliverylog.js";

/** Small chunks (an SMTP DATA stream may yield line by line) are gathered up to this before one write. */
const WRITE_BATCH = 64 * 1024;
/** Only chunks smaller than this are gathered; larger ones are written straight from the source. */
const GATHER_BELOW = 16 * 1024;

async function writeAll(fd: number, path: string, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    done += await attempt("write", path, () => writeSome(fd, data, done, data.length - done));
  }
}

/**
 * Streams `source` into a new file, counting octets and bare LFs; removes the file on any failure.
 * The file is complete, stamped with `receivedAt` and (with fsync on) durable when this resolves; the
 * caller still has to make its directory entry durable.
 *
 * Without a `receivedAt` the file keeps the modification time its last write gave it, and that time
 * (as `list()` will read it) is returned: fresh mail needs no utimes call, one thread-pool round trip
 * less per message.
 *
 * With `keep`, the octets are also gathered for the delivery log; if all of them fit, the file is not
 * fsynced here (the log's record is what makes the delivery durable).
 */
export async function writeMessageFile(
  path: string,
  source: AsyncIterable<Uint8Array>,
  policy: SyncPolicy,
  receivedAt: number | undefined,
  keep?: KeptBody,
): Promise<{ size: number; crlfSize: number; receivedAt: number }> {
  const fd = await attempt("create", path, () => openNew(path));
  const counter = new BareLfCounter();
  let stamped = 0;
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
        await writeAll(fd, path, data);
      };
      for await (const chunk of source) {
        counter.push(chunk);
        if (chunk.length === 0) continue;
        if (staged + chunk.length > WRITE_BATCH) await flushPending();
        if (chunk.length >= GATHER_BELOW) {
          // Big chunks go out as they are: copying them cost more (fresh ArrayBuffers, more GC) than
          // the write it would save.
          await flushPending();
          // The log needs a copy of its own: the source may reuse this buffer for its next chunk.
          if (keep !== undefined && !keep.dropped) keep.add(Buffer.from(chunk));
          await writeAll(fd, path, chunk);
          continue;
        }
        // Buffer.from copies small chunks into Node's shared slab, which is nearly free.
        const copy = Buffer.from(chunk);
        pending.push(copy);
        staged += chunk.length;
        keep?.add(copy);
      }
      await flushPending();
      if (receivedAt === undefined) {
        // A stat of an open descriptor touches no disk and cannot block; rounded as list() rounds it.
        stamped = Math.round(fstatSync(fd).mtimeMs);
      } else {
        // Before the fsync, so the fsync covers it; through the descriptor, so no second path lookup.
        await attempt("utimes", path, () => setTimesFd(fd, new Date(receivedAt)));
        stamped = receivedAt;
      }
      if (policy.fsync && (keep === undefined || keep.dropped)) await attempt("fsync", path, () => fsyncFd(fd));
    } finally {
      await closeFd(fd);
    }
  } catch (error) {
    await unlinkQuiet(path).catch(() => undefined);
    throw error;
  }
  return { size: counter.octets, crlfSize: counter.octets + counter.count, receivedAt: stamped };
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
