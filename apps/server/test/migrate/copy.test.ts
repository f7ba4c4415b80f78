import { afterEach, describe, expect, it } from "vitest";
import { authenticate, fromBytes, hashPassword, type Mailbox, type ReadOptions, type Store } from "@mailroom/store";
import { copyStore, formatBytes, summarizeCopy, summarizeVerify, verifyCopy, type CopyProgressEvent } from "../../src/migrate/index.js";
import { availableBackends, memoryBackend, type Backend, type OpenedStore } from "./backends.js";
import { ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, seed, snapshot } from "./seed.js";

const backends = await availableBackends();
const others = backends.filter((b) => b.name !== "memory");
/**
 * memory → memory, memory → every built adapter, and the adapters in a ring (fs → postgres → redis →
 * fs), so that each adapter is once a target and once a source. With a single adapter built, it
 * is copied back into memory instead.
 */
const pairs: [Backend, Backend][] = [[memoryBackend, memoryBackend], ...others.map((b): [Backend, Backend] => [memoryBackend, b])];
if (others.length === 1) pairs.push([others[0]!, memoryBackend]);
else for (let i = 0; i < others.length; i++) pairs.push([others[i]!, others[(i + 1) % others.length]!]);

/** The same store, with every message stream passed through `tap` on its way out. */
function withReadTap(
  store: Store,
  tap: (uid: string, stream: AsyncIterable<Uint8Array>) => AsyncIterable<Uint8Array>,
): Store {
  const bind = <T extends object>(target: T, key: string | symbol): unknown => {
    const value: unknown = Reflect.get(target, key, target);
    return typeof value === "function" ? value.bind(target) : value;
  };
  return new Proxy(store, {
    get(target, key) {
      if (key !== "mailbox") return bind(target, key);
      return (id: string): Mailbox =>
        new Proxy(target.mailbox(id), {
          get(box, boxKey) {
            if (boxKey !== "read") return bind(box, boxKey);
            return async (uid: string, options?: ReadOptions) => tap(uid, await box.read(uid, options));
          },
        });
    },
  });
}

const opened: OpenedStore[] = [];
afterEach(async () => {
  for (const o of opened.splice(0)) await o.dispose();
});

async function open(backend: Backend): Promise<OpenedStore> {
  const o = await backend.open();
  opened.push(o);
  return o;
}

describe.each(pairs.map(([from, to]) => ({ from, to, label: `${from.name} → ${to.name}` })))("copyStore $label", ({ from, to }) => {
  it("copies directory and every message with the same UIDs, sizes, octets and dates", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);

    const events: CopyProgressEvent[] = [];
    const report = await copyStore(source, target, { verify: true, onProgress: (e) => events.push(e) });

    const total = seeded.alice.length + seeded.bob.length;
    const totalBytes = [...seeded.alice, ...seeded.bob].reduce((n, m) => n + m.size, 0);
    expect(report.domains).toEqual({ copied: 2, skipped: 0 });
    expect(report.accounts).toEqual({ copied: 2, skipped: 0 });
    expect(report.aliases).toEqual({ copied: 2, skipped: 0 });
    expect(report.messages).toEqual({ copied: total, skipped: 0, failed: 0, pruned: 0, retrieved: 0 });
    expect(report.bytes).toBe(totalBytes);
    expect(report.failures).toEqual([]);
    expect(report.sizeConflicts).toEqual([]);
    expect(report.verify?.ok).toBe(true);
    expect(events.filter((e) => e.type === "message" && e.action === "copied")).toHaveLength(total);
    expect(summarizeCopy(report)).toEqual([
      "domains:   2 copied, 0 already there",
      "accounts:  2 copied, 0 already there",
      "aliases:   2 copied, 0 already there",
      "mailboxes: 2",
      `messages:  ${total} copied (${formatBytes(totalBytes)}), 0 already there`,
      `verify: OK, 2 mailboxes and ${total} messages match`,
    ]);

    expect(await target.directory.listDomains()).toEqual(["example.test", "other.test"]);
    expect(await target.directory.aliasTargets("postmaster@example.test")).toEqual([ALICE]);
    expect(await target.directory.aliasTargets("@other.test")).toEqual([BOB]);
    // The hash travelled unchanged, so the old password still logs in and a wrong one does not.
    expect((await authenticate(target.directory, ALICE, ALICE_PASSWORD))?.address).toBe(ALICE);
    expect((await authenticate(target.directory, BOB, BOB_PASSWORD))?.address).toBe(BOB);
    expect(await authenticate(target.directory, ALICE, "wrong")).toBeNull();

    for (const address of [ALICE, BOB]) {
      const before = await snapshot(source, address);
      const after = await snapshot(target, address);
      expect([...after.keys()]).toEqual([...before.keys()]);
      for (const [uid, m] of before) {
        const copied = after.get(uid)!;
        expect(copied.size).toBe(m.size);
        expect(copied.hash).toBe(m.hash);
        expect(copied.retrieved).toBe(m.retrieved);
        // Adapters may keep dates at second precision.
        expect(Math.abs(copied.receivedAt - m.receivedAt)).toBeLessThan(1_000);
      }
    }
  });

  it("a second run copies nothing", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    await copyStore(source, target);
    const again = await copyStore(source, target);
    expect(again.domains).toEqual({ copied: 0, skipped: 2 });
    expect(again.accounts).toEqual({ copied: 0, skipped: 2 });
    expect(again.aliases).toEqual({ copied: 0, skipped: 2 });
    expect(again.messages).toEqual({ copied: 0, skipped: seeded.alice.length + seeded.bob.length, failed: 0, pruned: 0, retrieved: 0 });
    expect(again.bytes).toBe(0);
    expect(again.accountConflicts).toEqual([]);
  });

  it("an interrupted copy completes when run again, without duplicates", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    const total = seeded.alice.length + seeded.bob.length;

    const controller = new AbortController();
    let copied = 0;
    const first = copyStore(source, target, {
      signal: controller.signal,
      onProgress: (e) => {
        if (e.type === "message" && e.action === "copied" && ++copied === 3) controller.abort(new Error("stopped by test"));
      },
    });
    await expect(first).rejects.toThrow("stopped by test");
    expect((await verifyCopy(source, target)).ok).toBe(false);

    const second = await copyStore(source, target, { verify: true });
    expect(second.messages.copied).toBe(total - 3);
    expect(second.messages.skipped).toBe(3);
    expect(second.verify?.ok).toBe(true);
    const alice = (await target.directory.getAccount(ALICE))!;
    expect((await target.mailbox(alice.mailbox).list()).map((m) => m.uid)).toEqual(seeded.alice.map((m) => m.uid));
  });

  it("an abort in the middle of a large message leaves no part of it; the re-run copies it whole", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    const big = seeded.alice.find((m) => m.size > 1_000_000)!;
    const controller = new AbortController();
    const cut = new Error("cut in the middle of a message");
    // The source, with its big message handed out in small pieces and the copy stopped halfway through.
    const tapped = withReadTap(source, async function* (uid, stream) {
      let sent = 0;
      for await (const chunk of stream) {
        for (let i = 0; i < chunk.length; i += 16_384) {
          yield chunk.subarray(i, i + 16_384);
          sent += Math.min(16_384, chunk.length - i);
          if (uid === big.uid && sent > big.size / 2) controller.abort(cut);
        }
      }
    });
    await expect(copyStore(tapped, target, { signal: controller.signal })).rejects.toBe(cut);
    const alice = (await target.directory.getAccount(ALICE))!;
    expect((await target.mailbox(alice.mailbox).list()).map((m) => m.uid)).not.toContain(big.uid);

    const second = await copyStore(source, target, { verify: true, verifyContent: true });
    expect(second.verify?.ok).toBe(true);
    expect(second.messages.copied + second.messages.skipped).toBe(seeded.alice.length + seeded.bob.length);
  });

  it("verify reports a message deleted on the target; a re-run puts it back under its UID", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    await copyStore(source, target);

    const alice = (await target.directory.getAccount(ALICE))!;
    const box = target.mailbox(alice.mailbox);
    const victim = seeded.alice[2]!.uid;
    const lease = await box.acquireLease({ holder: "test", ttlMs: 10_000 });
    expect(await box.expunge([victim], lease)).toBe(1);
    await lease.release();

    const verify = await verifyCopy(source, target, { content: true });
    expect(verify.ok).toBe(false);
    expect(summarizeVerify(verify)).toEqual([
      `verify: DIFFERENCES FOUND (2 mailboxes, ${seeded.alice.length + seeded.bob.length} messages checked)`,
      `  ${verify.differences[0]!.mailbox}: ${seeded.alice.length} in source, ${seeded.alice.length - 1} in target`,
      `    missing: ${victim}`,
    ]);
    expect(verify.differences).toHaveLength(1);
    expect(verify.differences[0]).toMatchObject({
      target: alice.mailbox,
      sourceCount: seeded.alice.length,
      targetCount: seeded.alice.length - 1,
      missing: [victim],
      extra: [],
      sizeMismatch: [],
      retrievalMismatch: [],
      contentMismatch: [],
    });

    const repair = await copyStore(source, target, { verify: true });
    expect(repair.messages.copied).toBe(1);
    expect(repair.verify?.ok).toBe(true);
  });

  it("a re-run carries over first retrievals made on the source since the earlier pass, which verify reports until then", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    await copyStore(source, target);

    // Between the passes a client downloads one message from the old server and deletes another.
    const srcAlice = (await source.directory.getAccount(ALICE))!;
    const srcBox = source.mailbox(srcAlice.mailbox);
    const read = seeded.alice.find((m) => m.retrievedAt === null)!.uid;
    const gone = seeded.alice.find((m) => m.uid !== read && m.retrievedAt === null)!.uid;
    const lease = await srcBox.acquireLease({ holder: "test", ttlMs: 10_000 });
    await srcBox.markRetrieved([read], lease);
    await srcBox.expunge([gone], lease);
    await lease.release();
    const retrievedAt = (await srcBox.list()).find((m) => m.uid === read)!.retrievedAt!;

    const before = await verifyCopy(source, target);
    expect(before.ok).toBe(false);
    expect(before.differences[0]).toMatchObject({ extra: [gone], retrievalMismatch: [{ uid: read, source: retrievedAt, target: null }] });
    expect(summarizeVerify(before)).toContain(
      `    retrieved on one side only: ${read} (source ${new Date(retrievedAt).toISOString()}, target never)`,
    );

    const started = Date.now();
    const report = await copyStore(source, target, { prune: true, verify: true });
    expect(report.messages).toMatchObject({ copied: 0, pruned: 1, retrieved: 1 });
    expect(report.verify?.ok).toBe(true);
    const alice = (await target.directory.getAccount(ALICE))!;
    const there = (await target.mailbox(alice.mailbox).list()).find((m) => m.uid === read)!;
    // Stores may keep seconds only.
    expect(there.retrievedAt).toBeGreaterThanOrEqual(Math.min(retrievedAt, started) - 1_000);
    // Marked under a lease that the copy gave back.
    await (await target.mailbox(alice.mailbox).acquireLease({ holder: "test", ttlMs: 10_000 })).release();
    expect((await copyStore(source, target)).messages.retrieved).toBe(0);
  });

  it("prune removes target messages that were deleted from the source after an earlier pass", async () => {
    const { store: source } = await open(from);
    const { store: target } = await open(to);
    const seeded = await seed(source);
    await copyStore(source, target);

    const srcAlice = (await source.directory.getAccount(ALICE))!;
    const srcBox = source.mailbox(srcAlice.mailbox);
    const gone = seeded.alice[1]!.uid;
    const lease = await srcBox.acquireLease({ holder: "test", ttlMs: 10_000 });
    await srcBox.expunge([gone], lease);
    await lease.release();

    const plain = await verifyCopy(source, target);
    expect(plain.differences[0]?.extra).toEqual([gone]);

    const report = await copyStore(source, target, { prune: true, verify: true });
    expect(report.messages.pruned).toBe(1);
    expect(report.verify?.ok).toBe(true);
  });
});

describe("copyStore edge cases (memory)", () => {
  it("leaves a changed password on the target alone and reports it", async () => {
    const { store: source } = await open(memoryBackend);
    const { store: target } = await open(memoryBackend);
    await seed(source, 2);
    await copyStore(source, target);
    await target.directory.setPasswordHash(ALICE, "$scrypt$ln=10,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5");
    const again = await copyStore(source, target, { verify: true });
    expect(again.accountConflicts).toEqual([ALICE]);
    expect(again.verify?.accountConflicts).toEqual([ALICE]);
    expect(again.verify?.ok).toBe(false);
    expect((await target.directory.getAccount(ALICE))?.passwordHash).toBe("$scrypt$ln=10,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5");
  });

  it("leaves retrieval times for the next run while a session holds the target mailbox", async () => {
    const { store: source } = await open(memoryBackend);
    const { store: target } = await open(memoryBackend);
    const seeded = await seed(source, 2);
    await copyStore(source, target);
    const unread = seeded.alice.find((m) => m.retrievedAt === null)!.uid;
    const srcBox = source.mailbox((await source.directory.getAccount(ALICE))!.mailbox);
    const srcLease = await srcBox.acquireLease({ holder: "test", ttlMs: 10_000 });
    await srcBox.markRetrieved([unread], srcLease);
    await srcLease.release();

    const box = target.mailbox((await target.directory.getAccount(ALICE))!.mailbox);
    const session = await box.acquireLease({ holder: "pop3 session on the new server", ttlMs: 10_000 });
    const busy = await copyStore(source, target, { verify: true });
    expect(busy.messages.retrieved).toBe(0);
    expect(busy.verify?.differences[0]?.retrievalMismatch.map((m) => m.uid)).toEqual([unread]);
    await session.release();
    const later = await copyStore(source, target, { verify: true });
    expect(later.messages.retrieved).toBe(1);
    expect(later.verify?.ok).toBe(true);
  });

  it("an aborted signal stops before touching the target", async () => {
    const { store: source } = await open(memoryBackend);
    const { store: target } = await open(memoryBackend);
    await seed(source, 2);
    const controller = new AbortController();
    controller.abort(new Error("not now"));
    await expect(copyStore(source, target, { signal: controller.signal })).rejects.toThrow("not now");
    expect(await target.directory.listDomains()).toEqual([]);
  });

  it("two copies racing into one target: every message lands once, the loser's 'exists' counts as skipped", async () => {
    const { store: source } = await open(memoryBackend);
    const { store: target } = await open(memoryBackend);
    const seeded = await seed(source, 4);
    const total = seeded.alice.length + seeded.bob.length;
    const [a, b] = await Promise.all([copyStore(source, target), copyStore(source, target)]);
    expect(a.messages.failed + b.messages.failed).toBe(0);
    expect(a.messages.copied + b.messages.copied).toBe(total);
    expect(a.messages.copied + a.messages.skipped).toBe(total);
    expect(b.messages.copied + b.messages.skipped).toBe(total);
    expect((await verifyCopy(source, target)).ok).toBe(true);
  });
});

describe.each(backends.map((backend) => ({ backend, label: `${backend.name} → ${backend.name}` })))("copyStore $label", ({ backend }) => {
  it("never gives new mail on the target the UID of a message deleted from the source before the copy", async () => {
    const { store: source } = await open(backend);
    const { store: target } = await open(backend);
    await source.directory.addDomain("example.test");
    await source.directory.addAccount({ address: ALICE, passwordHash: await hashPassword(ALICE_PASSWORD, { logN: 10 }) });
    // Two mailboxes: one keeps its first message, the other is emptied; the newest UIDs of both are gone.
    const given = new Map<string, string[]>();
    for (const id of [ALICE, "emptied@example.test"]) {
      const box = source.mailbox(id);
      const uids: string[] = [];
      for (let n = 0; n < 3; n++) uids.push((await box.append(fromBytes(new TextEncoder().encode(`Subject: ${n}\r\n\r\nbody\r\n`)))).uid);
      const lease = await box.acquireLease({ holder: "test", ttlMs: 10_000 });
      await box.expunge(id === ALICE ? uids.slice(1) : uids, lease);
      await lease.release();
      given.set(id, uids);
    }
    await copyStore(source, target);
    for (const [id, uids] of given) {
      const fresh = await target.mailbox(id).append(fromBytes(new TextEncoder().encode("Subject: new\r\n\r\nnew\r\n")));
      expect(uids).not.toContain(fresh.uid);
    }
    // A second run (a resumed copy) changes nothing of that.
    await copyStore(source, target);
    const again = await target.mailbox(ALICE).append(fromBytes(new TextEncoder().encode("Subject: newer\r\n\r\nnewer\r\n")));
    expect(given.get(ALICE)).not.toContain(again.uid);
  });
});
