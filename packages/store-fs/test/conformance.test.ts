import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect } from "vitest";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createFsStore } from "../src/index.js";
import { FileThread } from "../src/filethread.js";

const tmp = await mkdtemp(join(tmpdir(), "mailroom-store-fs-conformance-"));
afterAll(() => rm(tmp, { recursive: true, force: true }));

// Small messages are read with synchronous calls and made durable through the delivery log by
// default: the suite runs once that way and once with every read asynchronous and every delivery
// fsynced on its own, so both read paths and both write paths answer to the same contract; a third
// run keeps the log but makes its file calls on the thread pool instead of the file thread.
// Started up front, so that the first run's logs are all written by the file thread.
expect(await FileThread.start()).not.toBeNull();

describeStoreConformance({
  name: "maildir",
  open: (ns) => createFsStore({ root: join(tmp, ns) }),
  destroy: (ns) => rm(join(tmp, ns), { recursive: true, force: true }),
});

describeStoreConformance({
  name: "maildir, asynchronous reads only, no delivery log",
  open: (ns) => createFsStore({ root: join(tmp, `async-${ns}`), syncReadBytes: 0, deliveryLogBytes: 0 }),
  destroy: (ns) => rm(join(tmp, `async-${ns}`), { recursive: true, force: true }),
});

describeStoreConformance({
  name: "maildir, delivery log without the file thread",
  open: (ns) => createFsStore({ root: join(tmp, `pool-${ns}`), fileThread: false }),
  destroy: (ns) => rm(join(tmp, `pool-${ns}`), { recursive: true, force: true }),
});
