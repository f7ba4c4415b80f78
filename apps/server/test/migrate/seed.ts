import { createHash } from "node:crypto";
import { fromBytes, hashPassword, readAll, type MessageInfo, type Store } from "@mailroom/store";

export const ALICE = "alice@example.test";
export const BOB = "bob@other.test";
export const ALICE_PASSWORD = "alice-secret";
export const BOB_PASSWORD = "bob-secret";

function message(n: number, extraBody = ""): string {
  return (
    `From: sender${n}@remote.test\r\nTo: ${ALICE}\r\nSubject: message ${n}\r\n` +
    `Message-ID: <m${n}@remote.test>\r\n\r\nBody of message ${n}.\r\n${extraBody}`
  );
}

/** A big one so that streaming has to happen in many chunks. */
function bigMessage(): Uint8Array {
  const line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
  return new TextEncoder().encode(message(99, line.repeat(20_000)));
}

export interface Seeded {
  /** Messages per account mailbox, as the source lists them. */
  readonly alice: readonly MessageInfo[];
  readonly bob: readonly MessageInfo[];
}

/**
 * Two domains, two accounts, an alias and a catch-all, mail in both mailboxes: some of it already
 * retrieved, one message under a Dovecot-style UID kept from an earlier migration.
 */
export async function seed(store: Store, aliceMessages = 6): Promise<Seeded> {
  const dir = store.directory;
  await dir.addDomain("example.test");
  await dir.addDomain("other.test");
  // Cheap hashes keep the test fast; the copy must carry them over unchanged either way.
  const alice = await dir.addAccount({ address: ALICE, passwordHash: await hashPassword(ALICE_PASSWORD, { logN: 10 }) });
  const bob = await dir.addAccount({ address: BOB, passwordHash: await hashPassword(BOB_PASSWORD, { logN: 10 }) });
  await dir.addAlias({ source: "postmaster@example.test", target: ALICE });
  await dir.addAlias({ source: "@other.test", target: BOB });

  const a = store.mailbox(alice.mailbox);
  const base = Date.UTC(2025, 0, 1);
  await a.append(fromBytes(message(0)), { uid: "000000016553f100", receivedAt: base, retrievedAt: base + 60_000 });
  for (let i = 1; i < aliceMessages; i++) {
    await a.append(fromBytes(message(i, "x\r\n".repeat(i * 10))), {
      receivedAt: base + i * 3_600_000,
      ...(i % 2 === 0 ? { retrievedAt: base + i * 3_600_000 + 5_000 } : {}),
    });
  }
  await a.append(fromBytes(bigMessage()), { receivedAt: base + 100 * 3_600_000 });
  const b = store.mailbox(bob.mailbox);
  await b.append(fromBytes(message(200)), { receivedAt: base });
  await b.append(fromBytes("Subject: no body, bare header\r\n"), { receivedAt: base + 1 });
  return { alice: await a.list(), bob: await b.list() };
}

export async function sha256(stream: AsyncIterable<Uint8Array>): Promise<string> {
  return createHash("sha256").update(await readAll(stream)).digest("hex");
}

/** uid → size, receivedAt, retrievedAt and content hash: everything a client or EXPIRE could notice. */
export async function snapshot(store: Store, address: string): Promise<Map<string, { size: number; receivedAt: number; retrieved: boolean; hash: string }>> {
  const account = await store.directory.getAccount(address);
  if (!account) throw new Error(`no account ${address}`);
  const box = store.mailbox(account.mailbox);
  const out = new Map<string, { size: number; receivedAt: number; retrieved: boolean; hash: string }>();
  for (const m of await box.list()) {
    out.set(m.uid, { size: m.size, receivedAt: m.receivedAt, retrieved: m.retrievedAt !== null, hash: await sha256(await box.read(m.uid)) });
  }
  return out;
}
