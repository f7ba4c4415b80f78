import { describeStoreConformance } from "../src/conformance/index.js";
import { createMemoryStore } from "../src/memory/index.js";

describeStoreConformance({
  name: "memory",
  open: async (namespace) => createMemoryStore({ namespace }),
});
