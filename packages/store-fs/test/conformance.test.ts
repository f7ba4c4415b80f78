import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect } from "vitest";
import type { ProcessStamp } from "@mailroom/store";
import { describeStoreConformance } from "@mailroom/store/conformance";
import { createFsStore, locateMailbox } from "../src/index.js";
import { LEASE_FILE } from "../src/lease.js";
import { FileThread } from "../src/filethread.js";

const tmp = await mkdtemp(join(tmpdir(), "mailroom-store-fs-conformance-"));
afterAll(() => rm(tmp, { recursive: true, force: true }));

// Small messages are read with synchronous calls and made durable through the delivery log by
// default: the suite runs once that way and once with every read asynchronous and every delivery
// fsynced on its own, so both read paths and both write paths answer to the same contract; a third
// run keeps the log but makes its file calls on the thread pool instead of the file thread.
// Started up front, so that the first run's logs are all written by the file thread.
expect(await FileThread.start()).not.toBeNull();

/** Rewrites the holder recorded in a lease or claim file, as another process would have written it. */
async function setOwner(path: string, owner: ProcessStamp | null): Promise<void> {
  const record = JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
  delete record["owner"];
  await writeFile(path, JSON.stringify(owner ? { ...record, owner } : record));
}

describeStoreConformance({
  name: "maildir",
  open: (ns) => createFsStore({ root: join(tmp, ns) }),
  destroy: (ns) => rm(join(tmp, ns), { recursive: true, force: true }),
  owners: {
    setLeaseOwner: (ns, mailbox, owner) => setOwner(join(locateMailbox(join(tmp, ns), mailbox).dir, LEASE_FILE), owner),
    setClaimOwner: (ns, id, owner) => setOwner(join(tmp, ns, ".queue", "items", id, LEASE_FILE), owner),
  },
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
