import { describe } from "vitest";
import type { Redis } from "ioredis";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createRedisStore, escapeKeyPart } from "../src/index.js";
import { adminClient, deletePrefix, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();

async function behindTheStore(change: (admin: Redis) => Promise<void>): Promise<void> {
  const admin = adminClient();
  await admin.connect();
  try {
    await change(admin);
  } finally {
    await admin.quit();
  }
}

describe.skipIf(!available)("redis", () => {
  describeStoreConformance({
    name: "redis",
    open: (ns) => createRedisStore({ url: redisUrl, prefix: `mrtest:${ns}:` }),
    destroy: (ns) => deletePrefix(`mrtest:${ns}:`),
    owners: {
      setLeaseOwner: (ns, mailbox, owner) =>
        behindTheStore(async (admin) => {
          const key = `mrtest:${ns}:{mb:${escapeKeyPart(mailbox)}}:lease-owner`;
          if (owner) await admin.set(key, JSON.stringify(owner), "PX", 600_000);
          else await admin.del(key);
        }),
      setClaimOwner: (ns, id, owner) =>
        behindTheStore(async (admin) => {
          const key = `mrtest:${ns}:{queue}:claim-owners`;
          // The record names the claim it belongs to by its token.
          const token = (await admin.hget(`mrtest:${ns}:{queue}:claims`, id))!.split(" ")[0]!;
          if (owner) await admin.hset(key, id, `${token} ${JSON.stringify(owner)}`);
          else await admin.hdel(key, id);
        }),
    },
  });
});
