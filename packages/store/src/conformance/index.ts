/**
 * The executable store contract. An adapter's whole conformance test is:
 *
 * ```ts
 * import { describeStoreConformance } from "@mailroom/store/conformance";
 * describeStoreConformance({ name: "mine", open: (namespace) => openMyStore(namespace) });
 * ```
 *
 * Every adapter runs every test: there is no skip list. Capabilities a store declares only add
 * assertions (`boundedMemory` adds the memory budget of the large-message tests).
 */
import { describe } from "vitest";
import { appendListReadTests } from "./append-list-read.js";
import { concurrencyTests } from "./concurrency.js";
import { deliverTests } from "./deliver.js";
import { directoryTests } from "./directory.js";
import { expungeTests } from "./expunge.js";
import type { ConformanceOptions } from "./harness.js";
import { largeMessageTests } from "./large-message.js";
import { leaseTests } from "./lease.js";
import { nameTests } from "./names.js";
import { ownerTests } from "./owners.js";
import { queueTests } from "./queue.js";
import { uidTests } from "./uids.js";

export type { ConformanceOptions, OwnerHooks } from "./harness.js";

/** Registers the conformance suite (vitest `describe`/`it` blocks) for one adapter. */
export function describeStoreConformance(options: ConformanceOptions): void {
  // Generous per-test time, so that a slow backend (a remote database, a loaded CI box) does not
  // depend on its package's vitest defaults; the large-message test sets its own.
  describe(`store conformance: ${options.name}`, { timeout: 60_000 }, () => {
    directoryTests(options);
    appendListReadTests(options);
    uidTests(options);
    expungeTests(options);
    leaseTests(options);
    concurrencyTests(options);
    deliverTests(options);
    nameTests(options);
    largeMessageTests(options);
    queueTests(options);
    if (options.owners) ownerTests({ ...options, owners: options.owners });
  });
}
