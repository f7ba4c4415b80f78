import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { isStoreError, processStamp } from "@mailroom/store";
import { withDirLock } from "../src/fsutil.js";
import { tempRoot } from "./helpers.js";

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A lock directory as another process would leave it: owned by `stamp`, last touched long ago. */
function leftLock(path: string, stamp: unknown): void {
  mkdirSync(path);
  if (stamp !== undefined) writeFileSync(join(path, "owner.someone"), JSON.stringify(stamp));
  const old = new Date(Date.now() - 60_000);
  utimesSync(path, old, old);
}

describe("withDirLock", () => {
  it("never breaks a stale-looking lock whose owner still runs (a heartbeat behind a slow disk)", async () => {
    const lock = join((await tempRoot("dirlock")), "held.lock");
    leftLock(lock, processStamp());
    const failure = await withDirLock(lock, async () => "got it", { staleMs: 100, waitMs: 400 }).catch((e: unknown) => e);
    expect(isStoreError(failure) && failure.code).toBe("temporary");
    expect(existsSync(join(lock, "owner.someone"))).toBe(true);
  });

  it("breaks a stale lock whose owner has ended, or that names no owner", async () => {
    const root = (await tempRoot("dirlock"));
    const me = processStamp();
    // A pid of this boot and namespace that runs nothing (the kernel's pid_max is far below it).
    leftLock(join(root, "dead.lock"), me === null ? undefined : { ...me, pid: 2 ** 30, start: "1" });
    leftLock(join(root, "unnamed.lock"), undefined);
    for (const name of ["dead.lock", "unnamed.lock"]) {
      expect(await withDirLock(join(root, name), async () => name, { staleMs: 100, waitMs: 2_000 })).toBe(name);
    }
    expect(readdirSync(root)).toEqual([]);
  });

  it("breaks a stale lock of another boot, as before there were owner names", async () => {
    const root = (await tempRoot("dirlock"));
    const me = processStamp();
    leftLock(join(root, "old.lock"), me === null ? undefined : { ...me, boot: "another-boot" });
    expect(await withDirLock(join(root, "old.lock"), async () => "taken", { staleMs: 100, waitMs: 2_000 })).toBe("taken");
  });

  it("leaves a lock alone on release once it is no longer its own", async () => {
    const root = (await tempRoot("dirlock"));
    const lock = join(root, "swapped.lock");
    await withDirLock(lock, async () => {
      // Someone broke ours and took the name meanwhile (what the owner check now prevents).
      renameSync(lock, join(root, "gone"));
      rmSync(join(root, "gone"), { recursive: true });
      mkdirSync(lock);
      writeFileSync(join(lock, "owner.other"), "{}");
    });
    expect(readdirSync(lock)).toEqual(["owner.other"]);
  });

  it("lets exactly one of many waiters in at a time around a lock whose owner died", async () => {
    const root = (await tempRoot("dirlock"));
    const lock = join(root, "contended.lock");
    const me = processStamp();
    leftLock(lock, me === null ? undefined : { ...me, pid: 2 ** 30, start: "1" });
    let inside = 0;
    let most = 0;
    await Promise.all(
      Array.from({ length: 12 }, () =>
        withDirLock(
          lock,
          async () => {
            inside++;
            most = Math.max(most, inside);
            await sleep(5);
            inside--;
          },
          { staleMs: 100, waitMs: 10_000 },
        ),
      ),
    );
    expect(most).toBe(1);
    expect(readdirSync(root)).toEqual([]);
  });
});
