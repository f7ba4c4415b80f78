import { describe, it } from "vitest";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, dropSchemas, postgresAvailable } from "./pg-env.js";

const available = await postgresAvailable();

if (available) {
  describeStoreConformance({
    name: "postgres",
    open: (ns) => createPostgresStore({ url: PG_URL, schema: `mr_${ns}`, poolSize: 4 }),
    destroy: (ns) => dropSchemas(`mr_${ns}`),
  });
} else {
  describe.skip("store conformance: postgres", () => {
    it("needs PostgreSQL", () => undefined);
  });
}
