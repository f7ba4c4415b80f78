import { constants, promises as fsp, type Dir } from "node:fs";
import { join, sep } from "node:path";
import {
  StoreError,
  assertMailboxId,
  guardAppendSource,
  type Delivered,
  type DeliverOptions,
  type Directory,
  type Mailbox,
  type MailboxId,
  type Queue,
  type Store,
  type StoreCapabilities,
} from "@mailroom/store";
import type { StoreContext } from "./context.js";
import { FsDirectory } from "./directory.js";
import { attempt, causedByErrno } from "./errors.js";
import { messageName, newBase, uidOfBase } from "./filenames.js";
import { readTextOrNull, readdirOrEmpty, unlinkQuiet } from "./fsutil.js";
import { ID_FILE, RESERVED_PREFIX, idFromSegments, locateMailbox } from "./layout.js";
import { FsMailbox, STATE_FILE } from "./maildir.js";
import { FsQueue } from "./queue.js";
import { gatherUpTo, linkOrCopy, writeHeldFile, writeMessageFile } from "./writing.js";
import { BareLfCounter } from "./streams.js";
import { renamePath } from "./fdio.js";
import type { FileThread } from "./filethread.js";

/** About what a delivery log record adds to its message per target (framing and the JSON header with the path). */
const LOG_RECORD_HEADER = 256;

async function hasEntry(dir: string): Promise<boolean> {
  let handle: Dir | undefined;
  try {
    handle = await fsp.opendir(dir);
    return (await handle.read()) !== null;
  } catch {
    return false;
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/**
 * A maildir counts as a mailbox once it holds mail or held some (expunge leaves the state file
 * behind); one that only saw a failed append or a lease does not.
 */
async function heldMail(dir: string): Promise<boolean> {
  if ((await hasEntry(join(dir, "new"))) || (await hasEntry(join(dir, "cur")))) return true;
  return fsp.stat(join(dir, STATE_FILE)).then(
    () => true,
    () => false,
  );
}

export class FsStore implements Store {
  readonly kind = "maildir";
  readonly capabilities: StoreCapabilities = { sharedAcrossProcesses: true, boundedMemory: true };
  readonly directory: Directory;
  readonly queue: Queue;
  private closed = false;

  constructor(private readonly ctx: StoreContext) {
    this.directory = new FsDirectory(ctx);
    this.queue = new FsQueue(ctx);
  }

  mailbox(id: MailboxId): Mailbox {
    return this.open(id);
  }

  private open(id: MailboxId): FsMailbox {
    assertMailboxId(id);
    return new FsMailbox(this.ctx, id);
  }

  /**
   * Writes the message once into the first mailbox's tmp/, then hard-links it into every mailbox's new/
   * (one inode, many names, as Postfix's virtual delivery of a multi-recipient message would not, but
   * Dovecot's LDA with hardlinks does). Any failure unlinks the copies made so far.
   */
  async deliver(
    mailboxes: readonly MailboxId[],
    source: AsyncIterable<Uint8Array>,
    options: DeliverOptions = {},
  ): Promise<readonly Delivered[]> {
    const boxes = mailboxes.map((id) => this.open(id));
    if (boxes.length === 0) return [];
    for (const box of boxes) await box.ensureDirs();
    const first = boxes[0]!;
    const base = newBase(this.ctx.host);
    // Concatenated, not joined: the mailbox paths are already normal and the names are ours.
    const temp = `${first.dir}${sep}tmp${sep}${base}`;
    const stamp = options.receivedAt === undefined ? undefined : Math.round(options.receivedAt);
    const log = this.ctx.deliveryLog;
    const space = this.ctx.space;
    // Mail this server already acknowledged (a bounce, queued mail for a local mailbox) is counted
    // against the reserve but never refused by it: only the disk itself may stop it.
    const refuse = options.accepted !== true;
    const keep = log?.keeper();
    const linked: string[] = [];
    const delivered: Delivered[] = [];
    let release: (() => void) | undefined;
    // What the reserve charged ahead of the writes (a message of known size): handed back as landed
    // once they completed or failed, whichever way this ends.
    let admitted = 0;
    try {
      const guarded = guardAppendSource(source, options);
      // Small messages are held in memory for the delivery log; null means all of it fit.
      const rest = keep === undefined ? guarded : await gatherUpTo(guarded, keep);
      const logged = log !== null && keep !== undefined && rest === null;
      // The file thread takes small messages only (their calls are short, where a hand-off to the pool
      // costs the most), and only with the log that uses it: see below.
      let thread: FileThread | null = null;
      let size: number;
      let crlfSize: number;
      let receivedAt: number;
      if (logged) {
        const counter = new BareLfCounter();
        for (const chunk of keep.chunks) counter.push(chunk);
        size = counter.octets;
        crlfSize = counter.octets + counter.count;
        receivedAt = stamp ?? Date.now();
        // Before anything is written: the size is known. Decided from a cached measurement, so
        // nearly always without a wait (see reserve.ts). Until the log is retired its record takes
        // as much room again, plus its header (the paths).
        if (space !== null) {
          const room = space.admit(size, size + LOG_RECORD_HEADER * boxes.length, refuse);
          admitted = typeof room === "number" ? room : await room;
        }
      } else {
        // The size comes with the end of the stream: let through step by step as it is written, so
        // that concurrent large messages cannot all pass one check and then fill the disk together;
        // a refusal stops the file part way, and the file is removed.
        const meter = space?.meter(refuse) ?? null;
        ({ size, crlfSize, receivedAt } = await writeMessageFile(temp, rest ?? guarded, this.ctx.policy, stamp, this.ctx.mailModes.file, meter));
      }
      // The other mailboxes get hard links first; the first mailbox then takes the tmp/ file itself by
      // rename (same directory tree, so never across file systems), which leaves nothing to clean up.
      const targets = boxes.map((box, i) => {
        const own = i === 0 ? base : newBase(this.ctx.host);
        delivered.push({ mailbox: box.id, message: { uid: uidOfBase(own), size, receivedAt, retrievedAt: null } });
        return `${box.dir}${sep}new${sep}${messageName(own, size, crlfSize, null)}`;
      });
      const own = targets[0]!;
      let published = false;
      if (logged) {
        // The file (no fsync) and the log's record (shared fdatasync) are written at the same time;
        // both are done BEFORE anything becomes visible. The files themselves are made durable in
        // bulk later. See deliverylog.ts.
        const recording = log.begin(targets, receivedAt, keep.chunks);
        // The thread that writes this record's log, or none: its ordering is what publish relies on.
        thread = recording.thread;
        const single = thread !== null && boxes.length === 1;
        const [written, recorded, renamed] = await Promise.allSettled([
          // Posted before the publish, so the thread has written the file when it renames it.
          writeHeldFile(temp, keep.chunks, receivedAt, thread, single, this.ctx.mailModes.file),
          attempt("deliver", temp, () => recording.durable),
          single ? attempt("deliver", own, () => thread!.publish(temp, own, recording.log, recording.end)) : Promise.resolve(),
        ]);
        if (recorded.status === "fulfilled") release = recorded.value;
        if (written.status === "rejected") throw written.reason;
        if (recorded.status === "rejected") throw recorded.reason;
        if (renamed.status === "rejected") throw renamed.reason;
        published = single;
      }
      for (let i = 1; i < boxes.length; i++) {
        const target = targets[i]!;
        await attempt("deliver", target, () => linkOrCopy(temp, target, `${boxes[i]!.dir}${sep}tmp`, this.ctx.policy));
        linked.push(target);
      }
      if (!published) await attempt("deliver", own, () => (thread !== null ? thread.rename(temp, own) : renamePath(temp, own)));
      linked.push(own);
      if (!logged) {
        // Group commit: each new/ is synced once for all the deliveries that linked into it meanwhile.
        const dirs = new Set(boxes.map((b) => `${b.dir}${sep}new`));
        await Promise.all([...dirs].map((dir) => attempt("fsync", dir, () => this.ctx.dirSyncs.sync(dir))));
      }
    } catch (error) {
      for (const path of linked) await unlinkQuiet(path).catch(() => undefined);
      await unlinkQuiet(temp).catch(() => undefined);
      if (causedByErrno(error, "ENOENT")) {
        // A maildir removed under the running server: the message is gone with the stream, so this
        // try is deferred (451), and the next one makes the directories again.
        for (const box of boxes) box.forgetDirs();
        throw new StoreError("temporary", `maildir: a mailbox directory disappeared during delivery: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      }
      throw error;
    } finally {
      // Every write of this delivery has completed or failed by now (both were awaited above).
      if (admitted > 0) space?.landed(admitted);
      keep?.drop();
      release?.();
    }
    return delivered;
  }

  /** Every `<domain>/<local>` directory that is a maildir, with the id it was created for. */
  async listMailboxes(): Promise<readonly MailboxId[]> {
    return attempt("list mailboxes", this.ctx.root, async () => {
      const ids: MailboxId[] = [];
      for (const domain of (await readdirOrEmpty(this.ctx.root)).sort()) {
        if (domain.startsWith(".") || domain.startsWith(RESERVED_PREFIX)) continue;
        for (const local of (await readdirOrEmpty(join(this.ctx.root, domain))).sort()) {
          if (local.startsWith(".") || local.startsWith(RESERVED_PREFIX)) continue;
          const dir = join(this.ctx.root, domain, local);
          if (!(await heldMail(dir))) continue;
          const id = idFromSegments(domain, local) ?? (await readTextOrNull(join(dir, ID_FILE)));
          // Only ids that lead back here: a foreign directory our encoding would never produce
          // (`Alice`, which we would spell `%41lice`) is not one of our mailboxes.
          if (id !== null && id.length > 0 && locateMailbox(this.ctx.root, id).dir === dir) ids.push(id);
        }
      }
      return ids;
    });
  }

  async ping(): Promise<void> {
    if (this.closed) throw new StoreError("unavailable", "maildir: store is closed");
    try {
      await fsp.access(this.ctx.root, constants.W_OK);
    } catch (error) {
      throw new StoreError("unavailable", `maildir: ${this.ctx.root} is not writable: ${String(error)}`, { cause: error });
    }
  }

  /**
   * From the reserve's last measurement (a new one if it is over a second old), minus what was let
   * through since: cheap enough for every MAIL FROM, and it sets nothing aside.
   */
  hasRoomFor(octets: number): boolean | Promise<boolean> {
    return this.ctx.space?.hasRoom(octets) ?? true;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.ctx.laterRecovery?.stop();
    this.ctx.dirSyncs.close();
    await this.ctx.deliveryLog?.close();
    this.ctx.bulk.close();
  }
}
