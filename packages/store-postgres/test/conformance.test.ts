import { describe, it } from "vitest";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable } from "./pg-env.js";

const available = await postgresAvailable();

if (available) {
  describeStoreConformance({
    name: "postgres",
    open: (ns) => createPostgresStore({ url: PG_URL, schema: `mr_${ns}`, poolSize: 4 }),
    destroy: (ns) => dropSchemas(`mr_${ns}`),
    owners: {
      setLeaseOwner: async (ns, mailbox, owner) => {
        await adminQuery(`UPDATE "mr_${ns}".leases SET owner = $2 WHERE mailbox = $1`, [mailbox, owner && JSON.stringify(owner)]);
      },
      setClaimOwner: async (ns, id, owner) => {
        await adminQuery(`UPDATE "mr_${ns}".queue_items SET claim_owner = $2 WHERE id = $1`, [id, owner && JSON.stringify(owner)]);
      },
    },
  });
} else {
  describe.skip("store conformance: postgres", () => {
    it("needs PostgreSQL", () => undefined);
  });
}
