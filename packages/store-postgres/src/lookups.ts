import {
  FetchedRecipientLookups,
  RECIPIENT_LOOKUP_DEPTH,
  domainOf,
  normalizeAddress,
  type Account,
  type RecipientLookups,
} from "@mailroom/store";
import type { Db } from "./db.js";

/**
 * One statement that fetches everything resolving one recipient may ask: the addresses its aliases
 * and its domain's catch-all lead to (as deep as `resolveRecipient` follows them, plus one hop for the
 * domains of the last targets), their accounts, their aliases and catch-alls, and which of their
 * domains are local. An RCPT to an account took four round trips one after the other before (the
 * domain twice, the account, its aliases); under load each one cost the server and the database more
 * than the delivery's own statements.
 *
 * Rows: `r` an address reached, `a` an account (address, mailbox, hash), `l` an alias (source,
 * target, seq), `d` a local domain. The domain is what follows the last `@`, as `domainOf` has it.
 */
export function recipientLookupsSql(s: string): string {
  return `
    WITH RECURSIVE reach (addr, depth) AS (
      SELECT $1::text, 0
      UNION
      SELECT l.target, r.depth + 1
      FROM reach r JOIN ${s}.aliases l ON l.source IN (r.addr, '@' || substring(r.addr from '[^@]*$'))
      WHERE r.depth < $2
    ),
    addrs AS (SELECT DISTINCT addr, substring(addr from '[^@]*$') AS domain FROM reach)
    SELECT 'r' AS kind, addr AS key, NULL::text AS value, NULL::text AS extra, NULL::bigint AS seq FROM addrs
    UNION ALL
    SELECT 'a', a.address, a.mailbox, a.password_hash, NULL FROM ${s}.accounts a WHERE a.address IN (SELECT addr FROM addrs)
    UNION ALL
    SELECT 'l', l.source, l.target, NULL, l.seq FROM ${s}.aliases l
    WHERE l.source IN (SELECT addr FROM addrs UNION SELECT '@' || domain FROM addrs)
    UNION ALL
    SELECT 'd', d.name, NULL, NULL, NULL FROM ${s}.domains d WHERE d.name IN (SELECT domain FROM addrs)`;
}

interface LookupRow {
  kind: "r" | "a" | "l" | "d";
  key: string;
  value: string | null;
  extra: string | null;
  seq: string | null;
}

/**
 * Fetches what resolving `address` needs in one round trip. An address the store would refuse as a
 * name gets the directory itself, which refuses it the usual way.
 */
export async function fetchRecipientLookups(db: Db, sql: string, directory: RecipientLookups, address: string): Promise<RecipientLookups> {
  let normal: string;
  try {
    normal = normalizeAddress(address);
  } catch {
    return directory;
  }
  const result = await db.query<LookupRow>("look up recipient", sql, [normal, RECIPIENT_LOOKUP_DEPTH]);
  const reached: string[] = [];
  const accounts = new Map<string, Account>();
  const targets = new Map<string, { target: string; seq: bigint }[]>();
  const local = new Set<string>();
  for (const row of result.rows) {
    if (row.kind === "r") reached.push(row.key);
    else if (row.kind === "a") accounts.set(row.key, { address: row.key, mailbox: row.value!, passwordHash: row.extra! });
    else if (row.kind === "d") local.add(row.key);
    else {
      const list = targets.get(row.key) ?? [];
      list.push({ target: row.value!, seq: BigInt(row.seq!) });
      targets.set(row.key, list);
    }
  }
  // In the order aliasTargets gives them.
  const ordered = new Map<string, string[]>();
  for (const [source, list] of targets) {
    ordered.set(source, list.sort((x, y) => (x.seq < y.seq ? -1 : x.seq > y.seq ? 1 : 0)).map((t) => t.target));
  }
  const targetsOf = (source: string): string[] => ordered.get(source) ?? [];
  const fetched = new FetchedRecipientLookups(directory);
  for (const addr of reached) {
    const domain = domainOf(addr);
    fetched.address(addr, accounts.get(addr) ?? null, targetsOf(addr)).source(`@${domain}`, targetsOf(`@${domain}`)).domain(domain, local.has(domain));
  }
  return fetched;
}
