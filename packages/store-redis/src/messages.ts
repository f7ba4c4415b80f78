import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { StoreError, type MessageInfo, type Uid } from "@mailroom/store";
import { call, runScript, type Context } from "./context.js";
import type { MailboxKeys } from "./keys.js";

/**
 * Cuts a source into chunks of exactly `size` octets (the last one may be shorter). Only one chunk is
 * held at a time, whatever the size of the message. Each chunk is gathered from copies of the pieces
 * (the source may reuse its buffers) and joined at its own length, so a 4 KB message does not cost a
 * buffer of `size`.
 */
export async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let filled = 0;
  for await (const piece of source) {
    let offset = 0;
    while (offset < piece.length) {
      const n = Math.min(size - filled, piece.length - offset);
      parts.push(Buffer.from(piece.subarray(offset, offset + n)));
      filled += n;
      offset += n;
      if (filled === size) {
        yield joined(parts, filled);
        parts = [];
        filled = 0;
      }
    }
  }
  if (filled > 0) yield joined(parts, filled);
}

function joined(parts: readonly Buffer[], length: number): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, length);
}

/** One append or enqueue in progress: a chunk list that expires unless committed. */
export class Staging {
  chunks = 0;

  constructor(
    private readonly ctx: Context,
    readonly key: string,
  ) {}

  async push(chunk: Buffer): Promise<void> {
    await runScript(this.ctx, "stage message chunk", "mailroomStageChunk", [this.key], [chunk, this.ctx.stagingTtlMs]);
    this.chunks++;
  }

  /** Best effort: if Redis is unreachable now, the expiry removes the staging list later. */
  async discard(): Promise<void> {
    if (this.chunks === 0) return;
    try {
      await this.ctx.client.del(this.key);
    } catch (error) {
      this.ctx.logger.debug({ key: this.key, error: String(error) }, "redis store: staging left to expire");
    }
  }
}

/** A staging list under a mailbox's hash tag, so that the commit can rename it into the mailbox. */
export class MailboxStaging extends Staging {
  constructor(
    ctx: Context,
    readonly keys: MailboxKeys,
  ) {
    super(ctx, keys.stage(randomBytes(12).toString("hex")));
  }
}

/** What one pass over the source left behind. */
export interface Staged {
  readonly size: number;
  /**
   * The whole message when it fitted in one chunk (nearly all mail): it goes to Redis with the commit
   * instead of through a staging list, one command fewer. `null` when the chunks were staged.
   */
  readonly whole: Buffer | null;
}

/**
 * Feeds every chunk to every staging list before pulling the next one (backpressure for all copies).
 * The first chunk is held back until a second one shows that the message needs staging at all.
 */
export async function stageAll(source: AsyncIterable<Uint8Array>, stagings: readonly Staging[], chunkBytes: number): Promise<Staged> {
  let size = 0;
  let held: Buffer | null = null;
  let staging = false;
  const pushToAll = async (chunk: Buffer): Promise<void> => {
    // Settle every push before failing, so that no write lands after the caller discarded the lists.
    const results = await Promise.allSettled(stagings.map((s) => s.push(chunk)));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  };
  for await (const chunk of rechunk(source, chunkBytes)) {
    size += chunk.length;
    if (!staging && held === null) {
      held = chunk;
      continue;
    }
    if (held !== null) {
      staging = true;
      await pushToAll(held);
      held = null;
    }
    await pushToAll(chunk);
  }
  return { size, whole: staging ? null : (held ?? Buffer.alloc(0)) };
}

/** The commit scripts' last argument: the message when it was not staged, none for an empty one. */
export function wholeArgs(whole: Buffer | null): Buffer[] {
  return whole === null || whole.length === 0 ? [] : [whole];
}

/** Takes the next UID from a mailbox's counter, skipping any that an import took explicitly. */
export async function allocateUid(ctx: Context, keys: MailboxKeys): Promise<Uid> {
  return String(await runScript(ctx, "allocate uid", "mailroomAllocUid", [keys.next, keys.used, keys.info], []));
}

export interface CommitRequest {
  /** An explicit UID (an import); without one the mailbox counter gives it. */
  readonly uid?: Uid | undefined;
  /** A UID taken from the counter beforehand, alongside other commands; used for the first attempt. */
  readonly allocated?: Uid | undefined;
  /** The message, when it was not staged (see {@link Staged.whole}). */
  readonly whole: Buffer | null;
  readonly size: number;
  readonly receivedAt: number;
  readonly retrievedAt: number | null;
}

/**
 * Makes a staged message visible in one atomic step. A generated UID comes from the mailbox counter;
 * if a concurrent import took that very string in the meantime, the counter simply moves on.
 */
export async function commit(ctx: Context, mailboxId: string, staging: MailboxStaging, request: CommitRequest): Promise<MessageInfo> {
  const keys = staging.keys;
  const explicit = request.uid !== undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const uid = request.uid ?? (attempt === 0 && request.allocated !== undefined ? request.allocated : await allocateUid(ctx, keys));
    const status = await runScript(
      ctx,
      "commit message",
      "mailroomCommit",
      [keys.info, keys.order, keys.seq, keys.used, staging.key, keys.body(uid)],
      [
        uid,
        explicit ? "1" : "0",
        request.size,
        request.receivedAt,
        request.retrievedAt === null ? "-" : request.retrievedAt,
        staging.chunks,
        ...wholeArgs(request.whole),
      ],
    );
    if (status === "ok") return { uid, size: request.size, receivedAt: request.receivedAt, retrievedAt: request.retrievedAt };
    if (status === "staging-lost") {
      throw new StoreError("temporary", `redis: staged copy for ${mailboxId} expired or was evicted before commit`);
    }
    if (explicit) throw new StoreError("exists", `redis: uid ${uid} already in mailbox ${mailboxId}`);
  }
  throw new StoreError("temporary", `redis: could not allocate a uid in ${mailboxId}`);
}

/** Takes a committed copy back (a later copy of the same delivery failed). */
export async function uncommit(ctx: Context, keys: MailboxKeys, uid: Uid): Promise<void> {
  await runScript(ctx, "roll back delivery", "mailroomUncommit", [keys.info, keys.order, keys.body(uid)], [uid]);
}

/** Parses the "size receivedAt retrievedAt" value of the info hash. */
export function parseInfo(uid: Uid, value: string): MessageInfo {
  const [size, receivedAt, retrievedAt] = value.split(" ");
  return {
    uid,
    size: Number(size),
    receivedAt: Number(receivedAt),
    retrievedAt: retrievedAt === undefined || retrievedAt === "-" ? null : Number(retrievedAt),
  };
}

/** The first chunk of `key`, asked for at once (see readChunks' `first`). */
export function firstChunk(ctx: Context, key: string, what: string): Promise<Buffer | null> {
  const pending = call(ctx, `read ${what}`, () => ctx.client.lindexBuffer(key, 0));
  // Not awaited when the lookup beside it finds no message; a failure then is nobody's to report.
  pending.catch(() => undefined);
  return pending;
}

/**
 * Yields the chunk list one LINDEX at a time, so a 50 MB message never sits in memory whole. `first`,
 * when given, is chunk 0 already asked for together with the lookup (one round trip for a message
 * that fits in one chunk, which is nearly all mail).
 */
export async function* readChunks(
  ctx: Context,
  key: string,
  count: number,
  what: string,
  first?: Promise<Buffer | null>,
): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < count; i++) {
    const chunk = await (i === 0 && first !== undefined ? first : call(ctx, `read ${what}`, () => ctx.client.lindexBuffer(key, i)));
    if (chunk === null) throw new StoreError("not-found", `redis: ${what} was removed while being read`);
    yield chunk;
  }
}
