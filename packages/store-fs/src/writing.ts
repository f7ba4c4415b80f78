import { closeSync, constants, fstatSync, promises as fsp } from "node:fs";
import { Buffer } from "node:buffer";
import { basename, join } from "node:path";
import { attempt, isErrno } from "./errors.js";
import { PRIVATE_FILE, unlinkQuiet, type SyncPolicy } from "./fsutil.js";
import { BareLfCounter } from "./streams.js";
import { closeFd, fsyncFd, openForWriting, openNew, openNewSyncing, setTimesFd, SYNC_WRITES, writevAt } from "./fdio.js";
import type { KeptBody } from "./deliverylog.js";
import type { FileThread } from "./filethread.js";
import type { SpaceMeter } from "./reserve.js";

/**
 * A message is gathered up to this much before one write. Every write is a hand-off to the thread pool
 * (a wake-up each way, the costly part on the benchmark VM), and a 100 KB message came as three to
 * six socket reads: gathered, it is one write. Bounded so that a large message still streams.
 */
const WRITE_BATCH = 128 * 1024;
/** Gathering buffers kept for the next deliveries (4 MiB at most). */
const SPARE_KEPT = 32;
const spare: Uint8Array[] = [];

/**
 * A gathering buffer of WRITE_BATCH octets. Reused rather than allocated per message or per chunk:
 * fresh buffers are garbage that only a collection gives back (a 50 MB message grew the server by
 * twice as much when every chunk was copied into a new one).
 */
function takeBuffer(): Uint8Array {
  return spare.pop() ?? new Uint8Array(WRITE_BATCH);
}

/** Only once no write uses it any more. */
function giveBack(buffer: Uint8Array): void {
  if (spare.length < SPARE_KEPT) spare.push(buffer);
}

/** Writes all of `parts` at the current position, going on after a short write. */
async function writeAll(fd: number, path: string, parts: Uint8Array[]): Promise<void> {
  let left = 0;
  for (const part of parts) left += part.length;
  while (left > 0) {
    let done = await attempt("write", path, () => writevAt(fd, parts, null));
    left -= done;
    // A short write (rare for a regular file): drop what went out and write the rest.
    while (done > 0 && parts.length > 0) {
      const first = parts[0]!;
      if (done >= first.length) {
        done -= first.length;
        parts.shift();
      } else {
        parts[0] = first.subarray(done);
        done = 0;
      }
    }
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
 * With a `meter` (the free-space reserve), every chunk is let through by it before it is written,
 * so a refusal ("no-space") stops the file part way, and told when the write that carries it has
 * completed; the meter is closed here, once the file is complete or removed.
 */
export async function writeMessageFile(
  path: string,
  source: AsyncIterable<Uint8Array>,
  policy: SyncPolicy,
  receivedAt: number | undefined,
  mode = PRIVATE_FILE,
  meter: SpaceMeter | null = null,
): Promise<{ size: number; crlfSize: number; receivedAt: number }> {
  // A message that fits one batch (nearly all mail) is written with one write() at its end. Opened
  // with SYNC_WRITES, that write is also its fsync: one hand-off to the thread pool at the end of the
  // data instead of two, which is both the wait before the reply and CPU (each hand-off wakes a pool
  // thread and then the event loop). A message that outgrows the batch goes on through a plain
  // descriptor and one fsync at the end, rather than a flush per batch. An explicit receivedAt is set
  // after the last write, so those (imports) take the plain path as well.
  let syncing = policy.fsync && receivedAt === undefined && SYNC_WRITES !== null;
  let fd = await attempt("create", path, () => (syncing ? openNewSyncing(path, mode) : openNew(path, mode)));
  const counter = new BareLfCounter();
  let stamped = 0;
  let synced = false;
  const buffer = takeBuffer();
  try {
    try {
      // Chunks are copied into one buffer as they come and written when it is full, so a source that
      // reuses its buffer for the next chunk cannot change what we write, and each write is as large
      // as the batch allows.
      let staged = 0;
      for await (const chunk of source) {
        // Before the chunk is copied: the source cannot reuse its buffer until we ask for the next one.
        if (meter !== null) {
          const room = meter.add(chunk.length);
          if (room !== undefined) await room;
        }
        counter.push(chunk);
        let from = 0;
        while (from < chunk.length) {
          const take = Math.min(chunk.length - from, WRITE_BATCH - staged);
          buffer.set(chunk.subarray(from, from + take), staged);
          staged += take;
          from += take;
          if (staged === WRITE_BATCH) {
            if (syncing) {
              // Nothing was written yet, so the plain descriptor starts at the right offset.
              const plain = await attempt("create", path, () => openForWriting(path));
              try {
                closeSync(fd);
              } catch {
                // Nothing was written through it, so a failed close loses nothing.
              }
              fd = plain;
              syncing = false;
            }
            await writeAll(fd, path, [buffer]);
            // Only now: while gathered, a measurement of free space cannot see them.
            meter?.wrote(WRITE_BATCH);
            staged = 0;
          }
        }
      }
      if (staged > 0) {
        await writeAll(fd, path, [buffer.subarray(0, staged)]);
        meter?.wrote(staged);
      }
      if (receivedAt === undefined) {
        // A stat of an open descriptor touches no disk and cannot block; rounded as list() rounds it.
        stamped = Math.round(fstatSync(fd).mtimeMs);
      } else {
        // Before the fsync, so the fsync covers it; through the descriptor, so no second path lookup.
        await attempt("utimes", path, () => setTimesFd(fd, new Date(receivedAt)));
        stamped = receivedAt;
      }
      if (policy.fsync) {
        // A syncing write made the file durable, stamp included; an empty file had no write to do it.
        if (!syncing || counter.octets === 0) await attempt("fsync", path, () => fsyncFd(fd));
        synced = true;
      }
    } finally {
      // Once the file is flushed, closing it has nothing left to write and returns at once (also on
      // NFS, whose close flushes): done here, it saves the delivery a hand-off to the thread pool.
      if (synced) closeSync(fd);
      else await closeFd(fd);
    }
  } catch (error) {
    const removed = await unlinkQuiet(path).then(
      () => true,
      () => false,
    );
    meter?.close(removed);
    throw error;
  } finally {
    // Every write that used it has ended (each was awaited, also one that failed).
    giveBack(buffer);
  }
  meter?.close();
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
    // A chunk that outgrows the log goes on to the streaming path as it is, like every chunk after it:
    // that path copies each one before it asks for the next. Copying it here first cost a 100 KB
    // message about a tenth of its CPU on the event loop (a fresh allocation, every page faulted in).
    let last = next.value;
    if (keep.fits(last.length)) {
      // A copy of our own, held while the source goes on: it may reuse its buffer for the next chunk.
      last = Buffer.from(last);
      if (keep.add(last)) continue;
    }
    const head = [...keep.chunks, last];
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
  mode = PRIVATE_FILE,
): Promise<void> {
  if (thread !== null) return attempt("create", path, () => thread.writeNew(path, chunks, mtimeMs, gated, mode));
  const fd = await attempt("create", path, () => openNew(path, mode));
  try {
    try {
      await writeAll(fd, path, [...chunks]);
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
