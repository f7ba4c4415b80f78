import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Redis } from "ioredis";
import { StoreError, fromBytes, processStamp, readAll, type Store } from "@mailroom/store";
import { createRedisStore, escapeKeyPart } from "../src/index.js";
import { adminClient, deletePrefix, keysUnder, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();

const prefix = `mrtest:layout_${process.pid}_${Date.now().toString(36)}:`;
const encoder = new TextEncoder();

/** prefix, then exactly one hash tag, then a colon: `{mb:<escaped id>}` or `{dir}`. */
const KEY = /^(?<prefix>[^{}]*)(?<tag>\{(?:mb:[^{}]*|dir)\}):[^{}]*$/;

// Ids chosen to break a naive layout: braces, the separator, the escape character, path games.
const tricky = ["a{b}c@example.test", "x}y:z", "50%3A@example.test", "50:@example.test", "../../etc/passwd", "ünï@例え.jp"];

describe.skipIf(!available)("key layout", () => {
  let store: Store;
  let admin: Redis;

  beforeAll(async () => {
    store = await createRedisStore({ url: redisUrl, prefix, chunkBytes: 16 });
    admin = adminClient();
    await admin.connect();
  });

  afterAll(async () => {
    await store?.close();
    await admin?.quit();
    await deletePrefix(prefix);
  });

  it("escapes braces, the separator and the escape character, one-to-one", () => {
    expect(escapeKeyPart("a{b}c:d%e")).toBe("a%7Bb%7Dc%3Ad%25e");
    expect(escapeKeyPart("50:")).not.toBe(escapeKeyPart("50%3A"));
  });

  it("keeps every key of a mailbox under one hash tag, and directory keys under {dir}", async () => {
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({ address: "alice@example.test", passwordHash: "$x$y" });
    await store.directory.addAlias({ source: "@example.test", target: "alice@example.test" });
    const generated = new Map<string, string>();
    for (const id of tricky) {
      const box = store.mailbox(id);
      generated.set(id, (await box.append(fromBytes(`Subject: ${id}\r\n\r\na body longer than one sixteen-octet chunk\r\n`))).uid);
      await box.append(fromBytes("Subject: second\r\n\r\nx\r\n"), { uid: "imported{1}:x" });
      const lease = await box.acquireLease({ holder: "layout test", ttlMs: 30_000 });
      await box.markRetrieved([(await box.list())[0]!.uid], lease);
    }

    const keys = await keysUnder(admin, prefix);
    expect(keys.length).toBeGreaterThan(0);
    const tags = new Map<string, string[]>();
    for (const key of keys) {
      const match = KEY.exec(key);
      expect(match, `key ${JSON.stringify(key)} does not follow the layout`).not.toBeNull();
      expect(match!.groups!.prefix).toBe(prefix);
      const tag = match!.groups!.tag!;
      tags.set(tag, [...(tags.get(tag) ?? []), key.slice(prefix.length + tag.length + 1)]);
    }

    expect(tags.get("{dir}")).toEqual(expect.arrayContaining(["domains", "accounts", "aliases", "mailboxes"]));
    for (const id of tricky) {
      const own = tags.get(`{mb:${escapeKeyPart(id)}}`);
      expect(own, `keys of ${id}`).toEqual(
        expect.arrayContaining([
          "next",
          "used",
          "seq",
          "order",
          "info",
          "lease",
          "lease-holder",
          ...(processStamp() ? ["lease-owner"] : []),
          `body:${generated.get(id)!}`,
          "body:imported%7B1%7D%3Ax",
        ]),
      );
    }
    // Nothing but the directory and the six mailboxes, and no staging left behind.
    expect(tags.size).toBe(1 + tricky.length);
    expect(keys.filter((k) => k.includes(":stage:"))).toEqual([]);
  });

  it("never gives out a UID again after Redis lost the writes that took it (the counter went back)", async () => {
    const box = store.mailbox("lost@example.test");
    const nextKey = `${prefix}{mb:${escapeKeyPart("lost@example.test")}}:next`;
    const first = await box.append(fromBytes("Subject: kept\r\n\r\n"));
    const counterThen = await admin.get(nextKey);
    const lost = await box.append(fromBytes("Subject: lost in a crash\r\n\r\n"));
    // What a crash with appendfsync everysec, or a failover to a lagging replica, leaves: the second
    // message and the counter step that named it are gone. (A POP3 client may have its UIDL already.)
    const l = await box.acquireLease({ holder: "test", ttlMs: 30_000 });
    await box.expunge([lost.uid], l);
    await l.release();
    await admin.set(nextKey, counterThen!);
    const after = await box.append(fromBytes("Subject: new after the crash\r\n\r\n"));
    expect(after.uid).not.toBe(lost.uid);
    expect(BigInt(after.uid) > BigInt(lost.uid)).toBe(true);
    expect(BigInt(first.uid) < BigInt(lost.uid)).toBe(true);
  });

  it("takes and gives UID marks only below 2^53, where the scripts' numbers are exact", async () => {
    const box = store.mailbox("marks@example.test") as unknown as { uidMark(): Promise<string | null>; skipUids(mark: string): Promise<void> };
    const nextKey = `${prefix}{mb:${escapeKeyPart("marks@example.test")}}:next`;
    await box.skipUids("redis:9999999999999999");
    expect(await admin.get(nextKey)).toBeNull();
    await box.skipUids("redis:9007199254740000");
    expect(await box.uidMark()).toBe("redis:9007199254740000");
    await admin.set(nextKey, "9999999999999999");
    expect(await box.uidMark()).toBeNull();
  });

  it("keeps ids that differ only in escaping apart", async () => {
    const a = store.mailbox("50:@example.test");
    const b = store.mailbox("50%3A@example.test");
    const [first] = await a.list();
    const text = new TextDecoder().decode(await readAll(await a.read(first!.uid)));
    expect(text).toContain("Subject: 50:@example.test");
    const [other] = await b.list();
    expect(new TextDecoder().decode(await readAll(await b.read(other!.uid)))).toContain("Subject: 50%3A@example.test");
  });

  it("stores a message as a list of chunkBytes-sized pieces", async () => {
    const box = store.mailbox("chunks@example.test");
    const data = "0123456789abcdef".repeat(5) + "tail";
    const info = await box.append(fromBytes(data, 7));
    const key = `${prefix}{mb:${escapeKeyPart("chunks@example.test")}}:body:${escapeKeyPart(info.uid)}`;
    const pieces = await admin.lrangeBuffer(key, 0, -1);
    expect(pieces.map((p) => p.length)).toEqual([16, 16, 16, 16, 16, 4]);
    expect(await admin.pttl(key)).toBe(-1);
  });

  it("stores a message of one chunk or less as one piece, sent with the commit, and an empty one as no list", async () => {
    const box = store.mailbox("small@example.test");
    const bodyKey = (uid: string) => `${prefix}{mb:${escapeKeyPart("small@example.test")}}:body:${escapeKeyPart(uid)}`;
    for (const data of ["0123456789abcdef", "short"]) {
      const info = await box.append(fromBytes(data, 3));
      expect((await admin.lrangeBuffer(bodyKey(info.uid), 0, -1)).map((p) => p.toString())).toEqual([data]);
      expect(await admin.pttl(bodyKey(info.uid))).toBe(-1);
      expect(new TextDecoder().decode(await readAll(await box.read(info.uid)))).toBe(data);
    }
    const [empty] = await store.deliver(["small@example.test"], fromBytes(""));
    expect(empty!.message.size).toBe(0);
    expect(await admin.exists(bodyKey(empty!.message.uid))).toBe(0);
    expect(await readAll(await box.read(empty!.message.uid))).toHaveLength(0);
    const uids = (await box.list()).map((m) => BigInt(m.uid));
    expect(uids).toHaveLength(3);
    expect(uids[1]! > uids[0]! && uids[2]! > uids[1]!).toBe(true);
    expect((await keysUnder(admin, prefix)).filter((k) => k.includes(":stage:"))).toEqual([]);
  });

  it("reads the pieces back in order, and fails with not-found when the message goes mid-read", async () => {
    const box = store.mailbox("midread@example.test");
    const data = "0123456789abcdef".repeat(5) + "tail";
    const info = await box.append(fromBytes(data));
    expect(new TextDecoder().decode(await readAll(await box.read(info.uid)))).toBe(data);
    const reader = (await box.read(info.uid))[Symbol.asyncIterator]();
    expect(new TextDecoder().decode((await reader.next()).value)).toBe("0123456789abcdef");
    const lease = await box.acquireLease({ holder: "t", ttlMs: 5000 });
    expect(await box.expunge([info.uid], lease)).toBe(1);
    await lease.release();
    await expect(reader.next()).rejects.toMatchObject({ code: "not-found" });
  });

  it("stages an append in progress with an expiry, invisible to list, and removes it on failure", async () => {
    const box = store.mailbox("staging@example.test");
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let staged!: () => void;
    const firstChunkStaged = new Promise<void>((resolve) => (staged = resolve));
    async function* source(): AsyncGenerator<Uint8Array> {
      yield encoder.encode("Subject: slow\r\n\r\n0123456789abcdef0123456789abcdef");
      staged();
      await gate;
      throw new Error("client went away");
    }
    const appending = box.append(source());
    await firstChunkStaged;
    // Let the first chunks reach Redis.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const stagingKeys = (await keysUnder(admin, prefix)).filter((k) => k.includes(":stage:"));
    expect(stagingKeys).toHaveLength(1);
    expect(stagingKeys[0]!.startsWith(`${prefix}{mb:staging@example.test}:stage:`)).toBe(true);
    const ttl = await admin.pttl(stagingKeys[0]!);
    expect(ttl).toBeGreaterThan(0);
    expect(await box.list()).toEqual([]);

    release();
    await expect(appending).rejects.toThrow("client went away");
    expect((await keysUnder(admin, prefix)).filter((k) => k.includes(":stage:"))).toEqual([]);
    expect(await box.list()).toEqual([]);
  });

  it("rolls back copies already committed when a later copy of a delivery fails", async () => {
    const good = "good@example.test";
    const broken = "broken@example.test";
    // Sabotage the second mailbox's arrival counter so that its commit fails inside Redis (its UID is
    // taken before any commit, from other keys).
    await admin.set(`${prefix}{mb:${escapeKeyPart(broken)}}:seq`, "not a number");
    const error = await store.deliver([good, broken], fromBytes("Subject: both\r\n\r\nhi\r\n")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).code).toBe("permanent");
    expect(await store.mailbox(good).list()).toEqual([]);
    const leftOver = (k: string) => k.includes(":stage:") || k.includes("{mb:good@example.test}:body:") || k.includes("{mb:broken@example.test}:body:");
    expect((await keysUnder(admin, prefix)).filter(leftOver)).toEqual([]);
    // The failed UID is not handed out again.
    const failed = BigInt(await admin.get(`${prefix}{mb:${escapeKeyPart(good)}}:next`) ?? "0");
    const next = await store.mailbox(good).append(fromBytes("Subject: later\r\n\r\n"));
    expect(BigInt(next.uid) > failed).toBe(true);
  });
});
