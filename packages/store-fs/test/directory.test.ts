import { describe, expect, it } from "vitest";
import { join } from "node:path";
import { openStore, tempRoot } from "./helpers.js";

const root = await tempRoot("directory");
let n = 0;
const fresh = () => join(root, `ns${++n}`);
const HASH = "$scrypt$placeholder";

// The server keeps the directory file cached while `mailroom user add` (another process, here another
// store on the same root) rewrites it.
describe("maildir directory read by a running server", () => {
  it("sees accounts another process added in every lookup, also lookups that start together", async () => {
    const ns = fresh();
    const server = await openStore(ns);
    const admin = await openStore(ns);
    try {
      await admin.directory.addDomain("example.test");
      await admin.directory.addAccount({ address: "old@example.test", passwordHash: HASH });
      expect((await server.directory.getAccount("old@example.test"))?.address).toBe("old@example.test");

      for (const name of ["a", "b", "c"]) await admin.directory.addAccount({ address: `${name}@example.test`, passwordHash: HASH });
      // Several sessions' RCPTs arriving in one read of the sockets ask in the same turn.
      const found = await Promise.all(["a", "b", "c", "old"].map((name) => server.directory.getAccount(`${name}@example.test`)));
      expect(found.map((account) => account?.address ?? null)).toEqual(["a@example.test", "b@example.test", "c@example.test", "old@example.test"]);

      await admin.directory.removeAccount("b@example.test");
      const after = await Promise.all(["a", "b"].map((name) => server.directory.getAccount(`${name}@example.test`)));
      expect(after.map((account) => account?.address ?? null)).toEqual(["a@example.test", null]);
    } finally {
      await server.close();
      await admin.close();
    }
  });
});
