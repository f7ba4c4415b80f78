import { describe } from "vitest";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createRedisStore } from "../src/index.js";
import { deletePrefix, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();

describe.skipIf(!available)("redis", () => {
  describeStoreConformance({
    name: "redis",
    open: (ns) => createRedisStore({ url: redisUrl, prefix: `mrtest:${ns}:` }),
    destroy: (ns) => deletePrefix(`mrtest:${ns}:`),
  });
});
