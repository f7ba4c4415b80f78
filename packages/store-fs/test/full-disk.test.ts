import { describe, expect, it } from "vitest";
import { execFileSync } from "node:child_process";
import { mkdtemp, rm, statfs } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasStoreErrorCode, readAll, type Store } from "@mailroom/store";
import { createFsStore } from "../src/index.js";
import { text } from "./helpers.js";

const MIB = 1024 * 1024;
const DISK_MB = 4;

/**
 * A real small file system: a 4 MiB tmpfs, so that deliveries meet a real full disk. Mounting needs
 * root; where the test process is not root or the mount fails, the test is skipped with the reason.
 */
async function withSmallDisk(skip: (note: string) => never, body: (dir: string) => Promise<void>): Promise<void> {
  if (process.getuid?.() !== 0) skip("mounting a tmpfs needs root, and this test process is not root");
  const dir = await mkdtemp(join(tmpdir(), "mailroom-store-fs-full-"));
  try {
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", `size=${DISK_MB}m,mode=0700`, "tmpfs", dir], { stdio: "pipe" });
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
function message(i: number): string {
  const size = i % 4 === 3 ? 48 * 1024 : 8 * 1024;
  return `Subject: ${i}\r\n\r\n${"x".repeat(size - 16)}\r\n`;
}

/** Delivers until the store refuses; returns how many were accepted and the refusal. */
async function fill(store: Store, mailbox: string): Promise<{ accepted: number; refusal: unknown }> {
  for (let i = 0; i < 2_000; i++) {
    try {
      await store.deliver([mailbox], text(message(i)));
    } catch (error) {
      return { accepted: i, refusal: error };
    }
  }
  throw new Error("a 4 MiB disk took 2,000 messages");
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
