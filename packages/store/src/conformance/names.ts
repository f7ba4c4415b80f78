import { describe, expect, it } from "vitest";
import type { Mailbox, Store } from "../contract.js";
import { isStoreError } from "../errors.js";
import { appendBytes, expectStoreError, message, readBytes, text, useHarness, type ConformanceOptions } from "./harness.js";

/**
 * Ids a store may refuse with "invalid-name" but, if it takes them, must keep apart from each other
 * and from everything else. Several are pairs that collide under a careless encoding
 * (path joining, lower-casing, URL decoding, Unicode normalisation, truncation).
 */
const TRICKY_IDS: readonly string[] = [
  "../x",
  "x",
  "a/b",
  "a",
  "b",
  "a_b",
  "a%2Fb",
  "..",
  ".",
  "...",
  "%2e%2e",
  "%2E%2E",
  "../../../../../../../../etc/passwd",
  "/abs",
  "abs",
  "C:\\windows",
  "back\\slash",
  "back/slash",
  'quo"te',
  "quo'te",
  "with space",
  "with+space",
  "Mixed@Case.test",
  "mixed@case.test",
  "ü@例え.jp",
  "u\u0308@例え.jp",
  "xn--tda@xn--r8jz45g.jp",
  "emoji😀@example.test",
  "semi;colon",
  "star*",
  "question?",
  "pipe|",
  "lt<gt>",
  "colon:",
  "~user",
  "-dash",
  "a".repeat(320),
  "a".repeat(319) + "b",
  "例".repeat(320),
  "例".repeat(319) + "え",
  "tmp",
  "new",
  "cur",
  "CON",
  "nul",
];

/** Ids no store may take. */
const INVALID_IDS: readonly string[] = [
  "",
  "nul\0byte",
  "\0",
  "line\r\nbreak",
  "line\nbreak",
  "tab\there",
  "bell\x07",
  "del\x7f",
  "c1\u0085",
  "lone\uD800surrogate",
  "a".repeat(321),
];

type Outcome = { readonly kind: "taken"; readonly box: Mailbox; readonly uid: string } | { readonly kind: "refused" };

/** Either the store refuses the id (in `mailbox()` or at the first append) or it keeps one message there. */
async function tryId(store: Store, id: string): Promise<Outcome> {
  const refused = (error: unknown): Outcome => {
    if (isStoreError(error) && error.code === "invalid-name") return { kind: "refused" };
    throw new Error(`mailbox id ${JSON.stringify(id)}: expected success or "invalid-name", got ${String(error)}`, {
      cause: error,
    });
  };
  let box: Mailbox;
  try {
    box = store.mailbox(id);
  } catch (error) {
    return refused(error);
  }
  try {
    const info = await appendBytes(box, message(`for ${JSON.stringify(id)}`));
    return { kind: "taken", box, uid: info.uid };
  } catch (error) {
    return refused(error);
  }
}

export function nameTests(options: ConformanceOptions): void {
  describe("mailbox names", () => {
    const h = useHarness(options);

    it("keeps tricky ids apart (or refuses them with invalid-name) and lists them exactly as given", async () => {
      const { ns, store } = await h.fresh();
      const taken = new Map<string, Extract<Outcome, { kind: "taken" }>>();
      for (const id of TRICKY_IDS) {
        const outcome = await tryId(store, id);
        if (outcome.kind === "taken") taken.set(id, outcome);
      }
      // A store that refuses everything protects nothing; the plain ids must work.
      for (const plain of ["x", "a", "b", "abs", "mixed@case.test"]) expect(taken.has(plain), plain).toBe(true);

      const check = async (s: Store, label: string): Promise<void> => {
        for (const [id, { uid }] of taken) {
          const box = s.mailbox(id);
          const listed = await box.list();
          expect(listed.map((m) => m.uid), `${label}: messages of ${JSON.stringify(id)}`).toEqual([uid]);
          expect(text(await readBytes(box, uid)), `${label}: content of ${JSON.stringify(id)}`).toContain(
            `for ${JSON.stringify(id)}`,
          );
        }
        const mailboxes = new Set(await s.listMailboxes());
        for (const id of taken.keys()) expect(mailboxes.has(id), `${label}: listMailboxes has ${JSON.stringify(id)}`).toBe(true);
        for (const id of mailboxes) {
          expect(taken.has(id), `${label}: listMailboxes names ${JSON.stringify(id)}, which got no mail`).toBe(true);
        }
      };
      await check(store, "same instance");
      await store.close();
      await check(await h.open(ns), "after restart");
    });

    it('refuses empty ids, control characters, NUL, lone surrogates and over-long ids with "invalid-name"', async () => {
      const { store } = await h.fresh();
      for (const id of INVALID_IDS) {
        await expectStoreError(() => store.mailbox(id), "invalid-name");
      }
      expect(await store.listMailboxes()).toEqual([]);
    });

    it("keeps a refused or isolated id away from its neighbours' leases", async () => {
      const { store } = await h.fresh();
      const pairs: Array<[string, string]> = [
        ["../x", "x"],
        ["a/b", "a"],
        ["%2e%2e", ".."],
        ["Mixed@Case.test", "mixed@case.test"],
      ];
      for (const [tricky, plain] of pairs) {
        let box: Mailbox;
        try {
          box = store.mailbox(tricky);
        } catch (error) {
          if (isStoreError(error) && error.code === "invalid-name") continue;
          throw error;
        }
        let l;
        try {
          l = await box.acquireLease({ holder: "names", ttlMs: 10_000 });
        } catch (error) {
          if (isStoreError(error) && error.code === "invalid-name") continue;
          throw error;
        }
        const other = await store.mailbox(plain).acquireLease({ holder: "names", ttlMs: 10_000 });
        await other.release();
        await l.release();
      }
    });
  });
}
