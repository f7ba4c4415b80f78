import { describe, expect, it, vi } from "vitest";
import type { Account, Alias, RecipientLookups } from "../contract.js";
import { authenticate, hashPassword, isPasswordHash, verifyPassword } from "../password.js";
import { MAX_ALIAS_DEPTH, lookupsFor, resolveRecipient } from "../recipients.js";
import { appendBytes, expectStoreError, message, uidsOf, useHarness, type ConformanceOptions } from "./harness.js";

// Cheap hashes keep the directory tests fast; the format is the same as with the default cost.
const cheap = (password: string): Promise<string> => hashPassword(password, { logN: 10 });

// Adapters may return richer objects; the contract promises these fields.
const fields = (account: Account | null) =>
  account && { address: account.address, mailbox: account.mailbox, passwordHash: account.passwordHash };
const aliasFields = (aliases: readonly Alias[]) => aliases.map((a) => ({ source: a.source, target: a.target }));

export function directoryTests(options: ConformanceOptions): void {
  describe("directory: domains", () => {
    const h = useHarness(options);

    it("adds, finds, lists and removes domains, normalised", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      expect(await d.listDomains()).toEqual([]);
      expect(await d.hasDomain("example.test")).toBe(false);
      await d.addDomain("Example.TEST");
      await d.addDomain("other.test");
      expect(await d.hasDomain("example.test")).toBe(true);
      expect(await d.hasDomain("EXAMPLE.test")).toBe(true);
      expect(await d.hasDomain("example.test.")).toBe(true);
      expect([...(await d.listDomains())].sort()).toEqual(["example.test", "other.test"]);
      await d.removeDomain("EXAMPLE.TEST");
      expect(await d.hasDomain("example.test")).toBe(false);
      expect(await d.listDomains()).toEqual(["other.test"]);
    });

    it("keeps internationalised domains in their ASCII form", async () => {
      const { store } = await h.fresh();
      await store.directory.addDomain("例え.jp");
      expect(await store.directory.hasDomain("xn--r8jz45g.jp")).toBe(true);
      expect(await store.directory.hasDomain("例え.JP")).toBe(true);
      expect(await store.directory.listDomains()).toEqual(["xn--r8jz45g.jp"]);
    });

    it('refuses a duplicate domain with "exists" and an unknown one with "not-found"', async () => {
      const { store } = await h.fresh();
      await store.directory.addDomain("example.test");
      await expectStoreError(store.directory.addDomain("EXAMPLE.test"), "exists");
      await expectStoreError(store.directory.removeDomain("nowhere.test"), "not-found");
      expect(await store.directory.listDomains()).toEqual(["example.test"]);
    });

    it('refuses to remove a domain with "exists" while accounts or aliases remain', async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addAccount({ address: "alice@example.test", passwordHash: await cheap("pw") });
      await expectStoreError(d.removeDomain("example.test"), "exists");
      await d.removeAccount("alice@example.test");
      await d.addAlias({ source: "postmaster@example.test", target: "admin@elsewhere.test" });
      await expectStoreError(d.removeDomain("example.test"), "exists");
      await d.removeAlias("postmaster@example.test");
      await d.addAlias({ source: "@example.test", target: "admin@elsewhere.test" });
      await expectStoreError(d.removeDomain("example.test"), "exists");
      await d.removeAlias("@example.test");
      await d.removeDomain("example.test");
      expect(await d.hasDomain("example.test")).toBe(false);
    });

    it("keeps the directory across a restart and shares it between instances", async () => {
      const { ns, store } = await h.fresh();
      const hash = await cheap("pw");
      await store.directory.addDomain("example.test");
      await store.directory.addAccount({ address: "alice@example.test", passwordHash: hash });
      await store.directory.addAlias({ source: "info@example.test", target: "alice@example.test" });
      const second = await h.open(ns);
      expect(await second.directory.hasDomain("example.test")).toBe(true);
      expect((await second.directory.getAccount("alice@example.test"))?.passwordHash).toBe(hash);
      await store.close();
      const third = await h.open(ns);
      expect(await third.directory.listDomains()).toEqual(["example.test"]);
      expect((await third.directory.listAccounts()).map((a) => a.address)).toEqual(["alice@example.test"]);
      expect(aliasFields(await third.directory.listAliases())).toEqual([{ source: "info@example.test", target: "alice@example.test" }]);
    });
  });

  describe("directory: accounts", () => {
    const h = useHarness(options);

    it("adds an account only on a local domain", async () => {
      const { store } = await h.fresh();
      await expectStoreError(store.directory.addAccount({ address: "bob@nowhere.test", passwordHash: await cheap("x") }), "not-found");
      expect(await store.directory.listAccounts()).toEqual([]);
    });

    it("normalises addresses on the way in and on lookup", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const hash = await cheap("secret");
      const account = await d.addAccount({ address: "  Alice@Example.TEST ", passwordHash: hash });
      expect(account.address).toBe("alice@example.test");
      expect(account.passwordHash).toBe(hash);
      expect(typeof account.mailbox).toBe("string");
      expect(account.mailbox.length).toBeGreaterThan(0);
      expect(fields(await d.getAccount("alice@example.test"))).toEqual(fields(account));
      expect(fields(await d.getAccount("ALICE@example.test"))).toEqual(fields(account));
      expect(fields(await d.getAccount("Alice@Example.TEST"))).toEqual(fields(account));
      // A quoted local part that spells the same name is the same address (RFC 5321 4.1.2).
      expect(fields(await d.getAccount('"Alice"@example.test'))).toEqual(fields(account));
      expect(await d.getAccount("bob@example.test")).toBeNull();
    });

    it('refuses a duplicate account with "exists", whatever its case', async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const first = await d.addAccount({ address: "alice@example.test", passwordHash: await cheap("one") });
      await expectStoreError(d.addAccount({ address: "ALICE@example.TEST", passwordHash: await cheap("two") }), "exists");
      expect(fields(await d.getAccount("alice@example.test"))).toEqual(fields(first));
    });

    it("changes a password hash, and refuses one for an unknown account", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addAccount({ address: "alice@example.test", passwordHash: await cheap("old") });
      const next = await cheap("new");
      await d.setPasswordHash("Alice@Example.test", next);
      expect((await d.getAccount("alice@example.test"))?.passwordHash).toBe(next);
      await expectStoreError(d.setPasswordHash("nobody@example.test", next), "not-found");
    });

    it("removes an account but keeps its mailbox's messages", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const account = await d.addAccount({ address: "alice@example.test", passwordHash: await cheap("pw") });
      const info = await appendBytes(store.mailbox(account.mailbox), message("kept"));
      await d.removeAccount("ALICE@example.test");
      expect(await d.getAccount("alice@example.test")).toBeNull();
      await expectStoreError(d.removeAccount("alice@example.test"), "not-found");
      expect(await uidsOf(store.mailbox(account.mailbox))).toEqual([info.uid]);
    });

    it("lists accounts, all or by domain", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addDomain("other.test");
      const hash = await cheap("pw");
      for (const address of ["carol@example.test", "alice@example.test", "bob@other.test"]) {
        await d.addAccount({ address, passwordHash: hash });
      }
      const all = (await d.listAccounts()).map((a) => a.address).sort();
      expect(all).toEqual(["alice@example.test", "bob@other.test", "carol@example.test"]);
      expect((await d.listAccounts("Example.TEST")).map((a) => a.address).sort()).toEqual([
        "alice@example.test",
        "carol@example.test",
      ]);
      expect((await d.listAccounts("other.test")).map((a) => a.address)).toEqual(["bob@other.test"]);
      expect(await d.listAccounts("third.test")).toEqual([]);
    });

    it("gives distinct accounts distinct mailboxes", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const hash = await cheap("pw");
      const a = await d.addAccount({ address: "a@example.test", passwordHash: hash });
      const b = await d.addAccount({ address: "b@example.test", passwordHash: hash });
      expect(a.mailbox).not.toBe(b.mailbox);
    });

    it("keeps UTF-8 local parts apart that only an accent- or width-folding comparison would join", async () => {
      // A SQL collation that ignores accents (MySQL's default) would make these one account.
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const hash = await cheap("pw");
      const plain = await d.addAccount({ address: "u@example.test", passwordHash: hash });
      const umlaut = await d.addAccount({ address: "\u00fc@example.test", passwordHash: hash });
      const sharp = await d.addAccount({ address: "stra\u00dfe@example.test", passwordHash: hash });
      const ss = await d.addAccount({ address: "strasse@example.test", passwordHash: hash });
      expect(new Set([plain.mailbox, umlaut.mailbox, sharp.mailbox, ss.mailbox]).size).toBe(4);
      // The decomposed spelling (u + combining diaeresis) is the same address after NFC.
      expect(fields(await d.getAccount("u\u0308@example.test"))).toEqual(fields(umlaut));
      expect(fields(await d.getAccount("u@example.test"))).toEqual(fields(plain));
      await d.addAlias({ source: "\u00e9t\u00e9@example.test", target: "u@example.test" });
      expect(await d.aliasTargets("ete@example.test")).toEqual([]);
      expect(await d.aliasTargets("e\u0301te\u0301@example.test")).toEqual(["u@example.test"]);
    });

    it("finds an account under the address it gave back and under every spelling it was added with", async () => {
      // Lower-casing U+03AA U+0301 gives U+03CA U+0301, which NFC composes to U+0390: a directory that
      // normalises a normalised address again must land on the same key, or the user can neither log
      // in nor receive mail.
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const account = await d.addAccount({ address: "\u03AA\u0301nna@example.test", passwordHash: await cheap("pw") });
      for (const spelling of [account.address, "\u03AA\u0301nna@example.test", "\u03AA\u0301NNA@Example.TEST", "\u0390nna@example.test"]) {
        expect(fields(await d.getAccount(spelling)), spelling).toEqual(fields(account));
        expect((await authenticate(d, spelling, "pw"))?.address, spelling).toBe(account.address);
        expect(await resolveRecipient(d, spelling), spelling).toEqual({ kind: "local", mailboxes: [account.mailbox] });
      }
      await expectStoreError(d.addAccount({ address: "\u0390NNA@example.test", passwordHash: await cheap("pw") }), "exists");
    });
  });

  describe("directory: invalid input", () => {
    const h = useHarness(options);

    it('refuses malformed domains and addresses with "invalid-name" and stores nothing', async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      for (const domain of ["", "bad domain.test", "-x.test", "a..test", "x\r\n.test"]) {
        await expectStoreError(d.addDomain(domain), "invalid-name");
      }
      await d.addDomain("example.test");
      const hash = await cheap("pw");
      for (const address of ["no-at-sign", "user%other@example.test", "a!b@example.test", '"q r"@example.test', "a\r\nb@example.test"]) {
        await expectStoreError(d.addAccount({ address, passwordHash: hash }), "invalid-name");
        await expectStoreError(d.addAlias({ source: address, target: "alice@example.test" }), "invalid-name");
      }
      expect(await d.listDomains()).toEqual(["example.test"]);
      expect(await d.listAccounts()).toEqual([]);
      expect(await d.listAliases()).toEqual([]);
    });
  });

  describe("directory: aliases", () => {
    const h = useHarness(options);

    it("adds aliases and catch-alls, normalised, and lists their targets", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addAlias({ source: "Info@Example.TEST", target: "Alice@Example.test" });
      await d.addAlias({ source: "info@example.test", target: "bob@elsewhere.test" });
      await d.addAlias({ source: "@EXAMPLE.test", target: "alice@example.test" });
      expect([...(await d.aliasTargets("INFO@example.test"))].sort()).toEqual(["alice@example.test", "bob@elsewhere.test"]);
      expect(await d.aliasTargets("@example.test")).toEqual(["alice@example.test"]);
      expect(await d.aliasTargets("nobody@example.test")).toEqual([]);
      const sortAliases = (list: readonly { source: string; target: string }[]) =>
        [...list].map((a) => `${a.source} -> ${a.target}`).sort();
      expect(sortAliases(await d.listAliases())).toEqual([
        "@example.test -> alice@example.test",
        "info@example.test -> alice@example.test",
        "info@example.test -> bob@elsewhere.test",
      ]);
      expect(sortAliases(await d.listAliases("example.test"))).toHaveLength(3);
      expect(await d.listAliases("elsewhere.test")).toEqual([]);
    });

    it('refuses an alias on a foreign domain with "not-found" and a duplicate pair with "exists"', async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await expectStoreError(d.addAlias({ source: "x@nowhere.test", target: "a@example.test" }), "not-found");
      await expectStoreError(d.addAlias({ source: "@nowhere.test", target: "a@example.test" }), "not-found");
      await d.addAlias({ source: "x@example.test", target: "a@example.test" });
      await expectStoreError(d.addAlias({ source: "X@example.test", target: "A@example.test" }), "exists");
      expect(await d.aliasTargets("x@example.test")).toEqual(["a@example.test"]);
    });

    it("removes one pair, or every pair of a source", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addAlias({ source: "team@example.test", target: "a@example.test" });
      await d.addAlias({ source: "team@example.test", target: "b@example.test" });
      await d.addAlias({ source: "team@example.test", target: "c@example.test" });
      await d.addAlias({ source: "other@example.test", target: "a@example.test" });
      await d.removeAlias("TEAM@example.test", "B@example.test");
      expect([...(await d.aliasTargets("team@example.test"))].sort()).toEqual(["a@example.test", "c@example.test"]);
      await expectStoreError(d.removeAlias("team@example.test", "b@example.test"), "not-found");
      await d.removeAlias("team@example.test");
      expect(await d.aliasTargets("team@example.test")).toEqual([]);
      expect(await d.aliasTargets("other@example.test")).toEqual(["a@example.test"]);
      await expectStoreError(d.removeAlias("team@example.test"), "not-found");
    });
  });

  describe("directory: logins and recipients", () => {
    const h = useHarness(options);

    it("authenticates against hashes kept in the store", async () => {
      const { ns, store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      const hash = await cheap("correct horse");
      await d.addAccount({ address: "alice@example.test", passwordHash: hash });
      const stored = (await d.getAccount("alice@example.test"))!.passwordHash;
      expect(stored).not.toContain("correct horse");
      expect(isPasswordHash(stored)).toBe(true);
      expect(await verifyPassword("correct horse", stored)).toBe(true);

      expect((await authenticate(d, "Alice@Example.TEST", "correct horse"))?.address).toBe("alice@example.test");
      expect(await authenticate(d, "alice@example.test", "wrong")).toBeNull();
      expect(await authenticate(d, "nobody@example.test", "correct horse")).toBeNull();

      await d.setPasswordHash("alice@example.test", await cheap("battery staple"));
      const reopened = await h.open(ns);
      expect(await authenticate(reopened.directory, "alice@example.test", "correct horse")).toBeNull();
      expect((await authenticate(reopened.directory, "alice@example.test", "battery staple"))?.address).toBe(
        "alice@example.test",
      );
    });

    it("resolves accounts, aliases, chains, catch-alls, loops, unknown and foreign addresses", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addDomain("second.test");
      const hash = await cheap("pw");
      const alice = await d.addAccount({ address: "alice@example.test", passwordHash: hash });
      const bob = await d.addAccount({ address: "bob@second.test", passwordHash: hash });
      await d.addAlias({ source: "info@example.test", target: "alice@example.test" });
      await d.addAlias({ source: "sales@example.test", target: "info@example.test" });
      await d.addAlias({ source: "team@example.test", target: "alice@example.test" });
      await d.addAlias({ source: "team@example.test", target: "bob@second.test" });
      await d.addAlias({ source: "team@example.test", target: "friend@foreign.test" });
      await d.addAlias({ source: "loop1@example.test", target: "loop2@example.test" });
      await d.addAlias({ source: "loop2@example.test", target: "loop1@example.test" });
      await d.addAlias({ source: "@second.test", target: "alice@example.test" });

      const local = async (address: string): Promise<string[]> => {
        const r = await resolveRecipient(d, address);
        expect(r.kind, address).toBe("local");
        return r.kind === "local" ? [...r.mailboxes].sort() : [];
      };
      expect(await local("Alice@Example.TEST")).toEqual([alice.mailbox]);
      expect(await local("info@example.test")).toEqual([alice.mailbox]);
      expect(await local("sales@example.test")).toEqual([alice.mailbox]);
      expect(await local("team@example.test")).toEqual([alice.mailbox, bob.mailbox].sort());
      expect(await local("bob@second.test")).toEqual([bob.mailbox]);
      expect(await local("anything@second.test")).toEqual([alice.mailbox]);
      expect(await resolveRecipient(d, "loop1@example.test")).toEqual({ kind: "unknown" });
      expect(await resolveRecipient(d, "nobody@example.test")).toEqual({ kind: "unknown" });
      expect(await resolveRecipient(d, "alice@foreign.test")).toEqual({ kind: "not-local" });
      expect(await resolveRecipient(d, "not-an-address")).toEqual({ kind: "not-local" });
    });

    it("resolves through recipientLookups exactly as one lookup at a time, deep chains and catch-alls included", async () => {
      const { store } = await h.fresh();
      const d = store.directory;
      await d.addDomain("example.test");
      await d.addDomain("second.test");
      const hash = await cheap("pw");
      await d.addAccount({ address: "alice@example.test", passwordHash: hash });
      await d.addAccount({ address: "bob@second.test", passwordHash: hash });
      await d.addAccount({ address: "carol@example.test", passwordHash: hash });
      // A chain one hop longer than resolveRecipient follows, and a shortcut into its middle.
      const chain = Array.from({ length: MAX_ALIAS_DEPTH + 2 }, (_, i) => `c${i}@example.test`);
      for (let i = 0; i + 1 < chain.length; i++) await d.addAlias({ source: chain[i]!, target: chain[i + 1]! });
      await d.addAlias({ source: chain.at(-1)!, target: "alice@example.test" });
      await d.addAlias({ source: `c${MAX_ALIAS_DEPTH - 1}@example.test`, target: "bob@second.test" });
      await d.addAlias({ source: "short@example.test", target: `c${MAX_ALIAS_DEPTH - 2}@example.test` });
      // Several targets in an order of their own, an account that also forwards, catch-alls.
      await d.addAlias({ source: "team@example.test", target: "carol@example.test" });
      await d.addAlias({ source: "team@example.test", target: "bob@second.test" });
      await d.addAlias({ source: "team@example.test", target: "alice@example.test" });
      await d.addAlias({ source: "team@example.test", target: "out@foreign.test" });
      await d.addAlias({ source: "carol@example.test", target: "bob@second.test" });
      await d.addAlias({ source: "@second.test", target: "team@example.test" });
      await d.addAlias({ source: "@example.test", target: "nobody@second.test" });
      await d.addAlias({ source: "x@example.test", target: "y@example.test" });
      await d.addAlias({ source: "y@example.test", target: "x@example.test" });

      // The directory asked one question at a time, as a store without recipientLookups is.
      const oneByOne: RecipientLookups = {
        hasDomain: (domain) => d.hasDomain(domain),
        getAccount: (address) => d.getAccount(address),
        aliasTargets: (source) => d.aliasTargets(source),
      };
      const addresses = [
        "Alice@Example.TEST", "team@example.test", "carol@example.test", "short@example.test", "anyone@second.test",
        "anyone@example.test", "x@example.test", "bob@second.test", "out@foreign.test", "not-an-address",
        ...chain,
      ];
      for (const address of addresses) {
        expect(await resolveRecipient(d, address), address).toEqual(await resolveRecipient(oneByOne, address));
      }

      // Whatever a fetch for one address did not cover still gets the directory's answer.
      const lookups = await lookupsFor(d, "alice@example.test");
      expect(fields(await lookups.getAccount("Carol@example.test"))).toEqual(fields(await d.getAccount("carol@example.test")));
      expect(fields(await lookups.getAccount("alice@example.test"))).toEqual(fields(await d.getAccount("alice@example.test")));
      expect(await lookups.getAccount("nobody@example.test")).toBeNull();
      expect(await lookups.aliasTargets("team@example.test")).toEqual(await d.aliasTargets("team@example.test"));
      expect(await lookups.aliasTargets("@second.test")).toEqual(["team@example.test"]);
      expect(await lookups.hasDomain("SECOND.test")).toBe(true);
      expect(await lookups.hasDomain("foreign.test")).toBe(false);
      await expectStoreError(lookups.getAccount("not an address"), "invalid-name");
    });

    it("answers an account, an alias chain and a catch-all from recipientLookups' one fetch", async (context) => {
      const { store } = await h.fresh();
      const d = store.directory;
      if (!d.recipientLookups) return context.skip();
      await d.addDomain("example.test");
      await d.addDomain("second.test");
      const hash = await cheap("pw");
      const alice = await d.addAccount({ address: "alice@example.test", passwordHash: hash });
      const bob = await d.addAccount({ address: "bob@second.test", passwordHash: hash });
      await d.addAlias({ source: "sales@example.test", target: "team@example.test" });
      await d.addAlias({ source: "team@example.test", target: "alice@example.test" });
      await d.addAlias({ source: "team@example.test", target: "bob@second.test" });
      await d.addAlias({ source: "@second.test", target: "sales@example.test" });

      const fetches = vi.spyOn(d, "recipientLookups");
      const oneAtATime = [vi.spyOn(d, "hasDomain"), vi.spyOn(d, "getAccount"), vi.spyOn(d, "aliasTargets")];
      const cases: Array<[string, unknown]> = [
        ["alice@example.test", { kind: "local", mailboxes: [alice.mailbox] }],
        ["sales@example.test", { kind: "local", mailboxes: [alice.mailbox, bob.mailbox] }],
        ["anyone@second.test", { kind: "local", mailboxes: [alice.mailbox, bob.mailbox] }],
        ["nobody@example.test", { kind: "unknown" }],
        ["someone@foreign.test", { kind: "not-local" }],
      ];
      for (const [address, expected] of cases) expect(await resolveRecipient(d, address), address).toEqual(expected);
      expect(fetches).toHaveBeenCalledTimes(cases.length);
      for (const spy of oneAtATime) expect(spy).not.toHaveBeenCalled();
    });
  });
}
