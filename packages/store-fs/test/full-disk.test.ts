import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, rm, statfs } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasStoreErrorCode, readAll, type Store } from "@mailroom/store";
import { createFsStore, locateMailbox } from "../src/index.js";
import { text } from "./helpers.js";

const MIB = 1024 * 1024;
const DISK_MB = 4;

/**
 * A real small file system: a 4 MiB tmpfs (unless told otherwise), so that deliveries meet a real full disk. Mounting needs
 * root; where the test process is not root or the mount fails, the test is skipped with the reason.
 */
async function withSmallDisk(skip: (note: string) => never, body: (dir: string) => Promise<void>, sizeMb = DISK_MB): Promise<void> {
  if (process.getuid?.() !== 0) skip("mounting a tmpfs needs root, and this test process is not root");
  const dir = await mkdtemp(join(tmpdir(), "mailroom-store-fs-full-"));
  try {
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMb}m,mode=0700`, "tmpfs", dir], { stdio: "pipe" });
    } catch (error) {
      skip(`mount -t tmpfs failed: ${String((error as { stderr?: unknown }).stderr ?? error).trim()}`);
    }
    try {
      await body(dir);
    } finally {
      execFileSync("umount", [dir], { stdio: "pipe" });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function freeOctets(dir: string): Promise<number> {
  const info = await statfs(dir);
  return info.bavail * info.bsize;
}

/** Small messages go through the delivery log, every fourth one (48 KiB) streams into its file. */
function message(i: number, size = i % 4 === 3 ? 48 * 1024 : 8 * 1024): string {
  return `Subject: ${i}\r\n\r\n${"x".repeat(size - 16)}\r\n`;
}

/**
 * Delivers until the store refuses, then 1 KiB messages until it refuses those too (a message that
 * streams into its file is let through in steps, so it is refused a little before a small one is):
 * then no message of the sizes above fits. Returns how many were accepted and the last refusal.
 */
async function fill(store: Store, mailbox: string): Promise<{ accepted: number; refusal: unknown }> {
  let accepted = 0;
  let small = false;
  for (let i = 0; i < 2_000; i++) {
    const body = small ? message(accepted, 1024) : message(accepted);
    try {
      await store.deliver([mailbox], text(body));
      accepted++;
    } catch (error) {
      if (small) return { accepted, refusal: error };
      small = true;
    }
  }
  throw new Error("a small disk took 2,000 messages");
}

describe("maildir on a full disk", () => {
  it("keeps min_free_mb free for POP3: deliveries are refused with no-space, a login still leases, reads and deletes", async ({ skip }) => {
    await withSmallDisk(skip, async (root) => {
      const store = await createFsStore({ root, minFreeMb: 1, hostname: "test.host" });
      try {
        const box = "alice@example.test";
        const { accepted, refusal } = await fill(store, box);
        expect(accepted).toBeGreaterThan(20);
        expect(hasStoreErrorCode(refusal, "no-space")).toBe(true);
        expect(String(refusal)).toContain("min_free_mb");
        // Refused by the reserve, not by the disk: the reserve is still there.
        expect(await freeOctets(root)).toBeGreaterThanOrEqual(MIB);
        // New mail of every kind stays refused while the reserve is reached.
        await expect(store.deliver([box], text(message(0)))).rejects.toSatisfy((e) => hasStoreErrorCode(e, "no-space"));
        await expect(store.mailbox("bob@example.test").append(text(message(3)))).rejects.toSatisfy((e) => hasStoreErrorCode(e, "no-space"));
        await expect(store.queue.enqueue({ sender: box, recipients: ["carol@far.test"] }, text(message(3)))).rejects.toSatisfy((e) =>
          hasStoreErrorCode(e, "no-space"),
        );
        expect(await freeOctets(root)).toBeGreaterThanOrEqual(MIB);

        // A POP3 session: USER/PASS (lease), STAT/LIST, RETR, DELE ×n, QUIT (retrieval times, expunge).
        const mailbox = store.mailbox(box);
        const lease = await mailbox.acquireLease({ holder: "pop3 test", ttlMs: 30_000 });
        const listed = await mailbox.list();
        expect(listed).toHaveLength(accepted);
        const first = listed[0]!;
        expect(new TextDecoder().decode(await readAll(await mailbox.read(first.uid)))).toBe(message(0));
        const gone = listed.slice(0, Math.ceil(accepted / 2)).map((m) => m.uid);
        await mailbox.markRetrieved([first.uid], lease);
        expect(await mailbox.expunge(gone, lease)).toBe(gone.length);
        await lease.release();
        expect(await mailbox.list()).toHaveLength(accepted - gone.length);

        // The space deleted mail gave back takes new mail again, once the next measurement sees it.
        await new Promise((resolve) => setTimeout(resolve, 1_100));
        await store.deliver([box], text(message(1)));
      } finally {
        await store.close();
      }
    });
  });

  it("takes mail already acknowledged (accepted: true) below the reserve: deliveries of both sizes and enqueues", async ({ skip }) => {
    await withSmallDisk(skip, async (root) => {
      const store = await createFsStore({ root, minFreeMb: 1, hostname: "test.host" });
      try {
        const box = "alice@example.test";
        const { accepted, refusal } = await fill(store, box);
        expect(hasStoreErrorCode(refusal, "no-space")).toBe(true);
        // A bounce and queued mail the delivery worker hands to a local mailbox: one small enough for
        // the delivery log, one that streams into its file, and a bounce into the queue.
        await store.deliver([box], text(message(0)), { accepted: true });
        await store.deliver([box, "bob@example.test"], text(message(3)), { accepted: true });
        await store.queue.enqueue({ sender: "", recipients: ["carol@far.test"] }, text(message(3)), { accepted: true });
        expect(await store.mailbox(box).list()).toHaveLength(accepted + 2);
        expect(await store.queue.list()).toHaveLength(1);
        // New mail is still refused.
        await expect(store.deliver([box], text(message(3)))).rejects.toSatisfy((e) => hasStoreErrorCode(e, "no-space"));
        expect(await store.hasRoomFor?.(200_000)).toBe(false);
      } finally {
        await store.close();
      }
    });
  });

  it("a burst of large, slow deliveries at once never takes free space under the reserve; POP3 still works", async ({ skip }) => {
    await withSmallDisk(
      skip,
      async (root) => {
        const reserve = 8 * MIB;
        const store = await createFsStore({ root, minFreeMb: 8, hostname: "test.host" });
        try {
          expect(await store.hasRoomFor?.(3 * MIB)).toBe(true);
          // Six messages of 3 MiB, each sent in 64 KiB pieces over about half a second, all at once:
          // 18 MiB on a 16 MiB disk that keeps 8. Checked once up front and charged at the end, they
          // would all pass and run the disk out.
          const chunk = new Uint8Array(64 * 1024).fill(0x78);
          async function* slow(i: number): AsyncGenerator<Uint8Array> {
            yield new TextEncoder().encode(`Subject: large ${i}\r\n\r\n`);
            for (let k = 0; k < 48; k++) {
              await new Promise((resolve) => setTimeout(resolve, 10));
              yield chunk;
            }
          }
          let lowest = Infinity;
          let sampling = true;
          const sampler = (async () => {
            while (sampling) {
              lowest = Math.min(lowest, await freeOctets(root));
              await new Promise((resolve) => setTimeout(resolve, 2));
            }
          })();
          const outcomes = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => store.deliver([`user${i}@example.test`], slow(i))));
          sampling = false;
          await sampler;
          lowest = Math.min(lowest, await freeOctets(root));
          const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
          expect(refused.length).toBeGreaterThan(0);
          // ...but not all: a refused message gives back what it wrote once its file is removed, so
          // the refusals do not starve the messages that fit (two of 3 MiB do).
          expect(refused.length).toBeLessThan(outcomes.length);
          for (const r of refused) expect(hasStoreErrorCode(r.reason, "no-space"), String(r.reason)).toBe(true);
          // A write batch per message may be on its way while free space is measured.
          expect(lowest).toBeGreaterThanOrEqual(reserve - MIB);
          // The refused ones left nothing: no message, no file in tmp/.
          for (let i = 0; i < 6; i++) {
            const id = `user${i}@example.test`;
            expect(await store.mailbox(id).list()).toHaveLength(outcomes[i]!.status === "fulfilled" ? 1 : 0);
            expect(await readdir(join(locateMailbox(root, id).dir, "tmp"))).toEqual([]);
          }
          // POP3 on every mailbox: a lease, a listing, a read, and a deletion at QUIT.
          for (let i = 0; i < 6; i++) {
            const mailbox = store.mailbox(`user${i}@example.test`);
            const lease = await mailbox.acquireLease({ holder: "pop3 test", ttlMs: 30_000 });
            const listed = await mailbox.list();
            for (const m of listed) expect((await readAll(await mailbox.read(m.uid))).length).toBe(m.size);
            await mailbox.markRetrieved(listed.map((m) => m.uid), lease);
            expect(await mailbox.expunge(listed.map((m) => m.uid), lease)).toBe(listed.length);
            await lease.release();
          }
        } finally {
          await store.close();
        }
      },
      16,
    );
  });

  it("two workers' stores on one file system delivering side by side keep the reserve between them", async ({ skip }) => {
    await withSmallDisk(
      skip,
      async (dir) => {
        const reserve = 4 * MIB;
        // Two stores as two `[server] workers` would open them: each with a reserve of its own, neither
        // seeing what the other lets through until it measures.
        const stores = [
          await createFsStore({ root: join(dir, "a"), minFreeMb: 4, hostname: "test.host" }),
          await createFsStore({ root: join(dir, "b"), minFreeMb: 4, hostname: "test.host" }),
        ];
        try {
          const body = `Subject: large\r\n\r\n${"x".repeat(200 * 1024 - 21)}\r\n`;
          let lowest = Infinity;
          let sampling = true;
          const sampler = (async () => {
            while (sampling) {
              lowest = Math.min(lowest, await freeOctets(dir));
              await new Promise((resolve) => setTimeout(resolve, 1));
            }
          })();
          // Four connections per worker, each delivering until it is refused.
          const accepted = [0, 0];
          const refusals: unknown[] = [];
          await Promise.all(
            stores.flatMap((store, w) =>
              Array.from({ length: 4 }, async (_, k) => {
                for (let i = 0; i < 500; i++) {
                  try {
                    await store.deliver([`user${k}@example.test`], text(body));
                    accepted[w]!++;
                  } catch (error) {
                    refusals.push(error);
                    return;
                  }
                }
              }),
            ),
          );
          sampling = false;
          await sampler;
          lowest = Math.min(lowest, await freeOctets(dir));
          expect(refusals).toHaveLength(8);
          for (const r of refusals) expect(hasStoreErrorCode(r, "no-space"), String(r)).toBe(true);
          for (const r of refusals) expect(String(r)).toContain("min_free_mb");
          expect(accepted[0]! + accepted[1]!).toBeGreaterThan(20);
          // Not below the reserve by more than a write batch or two on their way while it was sampled.
          expect(lowest).toBeGreaterThanOrEqual(reserve - 256 * 1024);
        } finally {
          for (const store of stores) await store.close();
        }
      },
      16,
    );
  });

  it("by default keeps a sixteenth of a small file system, not 64 MiB: a 16 MiB disk takes mail and keeps 1 MiB", async ({ skip }) => {
    await withSmallDisk(
      skip,
      async (root) => {
        const store = await createFsStore({ root, hostname: "test.host" });
        try {
          expect(await store.hasRoomFor?.(0)).toBe(true);
          const { accepted, refusal } = await fill(store, "alice@example.test");
          expect(accepted).toBeGreaterThan(100);
          expect(hasStoreErrorCode(refusal, "no-space")).toBe(true);
          expect(String(refusal)).toContain("1 MiB kept in reserve");
          expect(await freeOctets(root)).toBeGreaterThanOrEqual(MIB);
          expect(await freeOctets(root)).toBeLessThan(2 * MIB);
        } finally {
          await store.close();
        }
      },
      16,
    );
  });

  it("with min_free_mb = 0, deliveries go on until the file system itself is full", async ({ skip }) => {
    await withSmallDisk(skip, async (root) => {
      const store = await createFsStore({ root, minFreeMb: 0, hostname: "test.host" });
      try {
        const { accepted, refusal } = await fill(store, "alice@example.test");
        expect(accepted).toBeGreaterThan(20);
        // ENOSPC from the disk, still a temporary "no-space" (452 4.3.1), but the reserve is gone.
        expect(hasStoreErrorCode(refusal, "no-space")).toBe(true);
        expect(String(refusal)).not.toContain("min_free_mb");
        expect(await freeOctets(root)).toBeLessThan(MIB);
      } finally {
        await store.close();
      }
    });
  });
});
