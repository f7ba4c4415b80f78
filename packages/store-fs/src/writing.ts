import { constants, fstatSync, promises as fsp } from "node:fs";
import { Buffer } from "node:buffer";
import { basename, join } from "node:path";
import { attempt, isErrno } from "./errors.js";
import { unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { BareLfCounter } from "./streams.js";
import { closeFd, fsyncFd, openNew, setTimesFd, writeSome } from "./fdio.js";
import type { KeptBody } from "./deliverylog.js";
import type { FileThread } from "./filethread.js";

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
 */
export async function writeMessageFile(
  path: string,
  source: AsyncIterable<Uint8Array>,
  policy: SyncPolicy,
  receivedAt: number | undefined,
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
          await writeAll(fd, path, chunk);
          continue;
        }
        // Buffer.from copies small chunks into Node's shared slab, which is nearly free.
        pending.push(Buffer.from(chunk));
        staged += chunk.length;
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
      if (policy.fsync) await attempt("fsync", path, () => fsyncFd(fd));
    } finally {
      await closeFd(fd);
    }
  } catch (error) {
    await unlinkQuiet(path).catch(() => undefined);
    throw error;
  }
  return { size: counter.octets, crlfSize: counter.octets + counter.count, receivedAt: stamped };
}

/**
 * Reads `source` into `keep` for the delivery log. Resolves null once all of it is held; if it
 * outgrows the log (size or memory budget), lets go of what was held and resolves a source that
 * yields the same octets from the start, for the streaming path.
 */
export async function gatherUpTo(source: AsyncIterable<Uint8Array>, keep: KeptBody): Promise<AsyncIterable<Uint8Array> | null> {
  const iterator = source[Symbol.asyncIterator]();
  for (;;) {
    const next = await iterator.next();
    if (next.done) return null;
    // A copy of our own: the source may reuse its buffer for the next chunk.
    const copy = Buffer.from(next.value);
    if (keep.add(copy)) continue;
    const head = [...keep.chunks, copy];
    keep.drop();
    return replayThen(head, iterator);
  }
}

/**
 * `head`, then the rest of `iterator`, as one source. A plain iterator object rather than an async
 * generator: the rest of a large message can be hundreds of chunks, and a generator layer costs a
 * few promise turns for each (measured: a quarter of a millisecond per 100 KB message).
 */
function replayThen(head: readonly Uint8Array[], iterator: AsyncIterator<Uint8Array>): AsyncIterable<Uint8Array> {
  let at = 0;
  const replay: AsyncIterator<Uint8Array> = {
    next: () => (at < head.length ? Promise.resolve({ value: head[at++]!, done: false }) : iterator.next()),
    return: async (value?: unknown) => (await iterator.return?.(value)) ?? { value: undefined, done: true },
  };
  return { [Symbol.asyncIterator]: () => replay };
}

/**
 * Writes a message held in memory into a new file stamped `mtimeMs`, without an fsync: it is only
 * used while the delivery log's record, written at the same time, is what makes the delivery durable.
 * The stamp is set explicitly (futimes) so that the record can carry it before the write is done.
 * With `thread`, the calls are made there (see filethread.ts), else through the thread pool; `gated`
 * tells the thread that a publish of the file follows.
 */
export async function writeHeldFile(
  path: string,
  chunks: readonly Uint8Array[],
  mtimeMs: number,
  thread: FileThread | null,
  gated = false,
): Promise<void> {
  if (thread !== null) return attempt("create", path, () => thread.writeNew(path, chunks, mtimeMs, gated));
  const fd = await attempt("create", path, () => openNew(path));
  try {
    try {
      const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      await writeAll(fd, path, data);
      await attempt("utimes", path, () => setTimesFd(fd, new Date(mtimeMs)));
    } finally {
      await closeFd(fd);
    }
  } catch (error) {
    await unlinkQuiet(path).catch(() => undefined);
    throw error;
  }
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
