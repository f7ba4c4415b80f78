import { describe, expect, it } from "vitest";
import { StoreError } from "@mailroom/store";
import { classifyPgError, toStoreError } from "../src/index.js";

// Stand-ins shaped like what pg throws: a DatabaseError carries the SQLSTATE in `code`, socket
// failures carry the Node system error code, and a dropped connection is a plain message.
const sqlState = (code: string): Error => Object.assign(new Error(`server said ${code}`), { code });
const system = (code: string): Error => Object.assign(new Error(`connect ${code} 127.0.0.1:5432`), { code });

const table: ReadonlyArray<[string, unknown, string]> = [
  ["connection refused", system("ECONNREFUSED"), "unavailable"],
  ["connection reset", system("ECONNRESET"), "unavailable"],
  ["broken pipe", system("EPIPE"), "unavailable"],
  ["host unknown", system("ENOTFOUND"), "unavailable"],
  ["connection terminated", new Error("Connection terminated unexpectedly"), "unavailable"],
  ["connection terminated by end", new Error("Connection terminated"), "unavailable"],
  ["client not queryable", new Error("Client has encountered a connection error and is not queryable"), "unavailable"],
  ["pool connect timeout", new Error("timeout exceeded when trying to connect"), "unavailable"],
  ["client-side query timeout", new Error("Query read timeout"), "unavailable"],
  ["pool ended", new Error("Cannot use a pool after calling end on the pool"), "unavailable"],
  ["both addresses refused", new AggregateError([system("ECONNREFUSED"), system("ECONNREFUSED")]), "unavailable"],
  ["admin shutdown 57P01", sqlState("57P01"), "unavailable"],
  ["crash shutdown 57P02", sqlState("57P02"), "unavailable"],
  ["starting up 57P03", sqlState("57P03"), "unavailable"],
  ["connection failure 08006", sqlState("08006"), "unavailable"],
  ["too many connections 53300", sqlState("53300"), "unavailable"],
  ["out of memory 53200", sqlState("53200"), "unavailable"],
  ["statement timeout 57014", sqlState("57014"), "unavailable"],
  ["read-only standby 25006", sqlState("25006"), "unavailable"],
  ["bad password 28P01", sqlState("28P01"), "unavailable"],
  ["no such database 3D000", sqlState("3D000"), "unavailable"],
  ["serialization failure 40001", sqlState("40001"), "temporary"],
  ["deadlock 40P01", sqlState("40P01"), "temporary"],
  ["lock not available 55P03", sqlState("55P03"), "temporary"],
  ["disk full 53100", sqlState("53100"), "no-space"],
  ["unique violation 23505", sqlState("23505"), "exists"],
  ["syntax error 42601", sqlState("42601"), "permanent"],
  ["undefined table 42P01", sqlState("42P01"), "permanent"],
  ["check violation 23514", sqlState("23514"), "permanent"],
  ["something else", new Error("boom"), "permanent"],
  ["a thrown string", "weird", "permanent"],
];

describe("pg error mapping", () => {
  it.each(table)("%s → %s", (_label, error, expected) => {
    expect(classifyPgError(error)).toBe(expected);
    const mapped = toStoreError(error, "doing a thing");
    expect(mapped).toBeInstanceOf(StoreError);
    expect(mapped.code).toBe(expected);
    expect(mapped.message).toMatch(/^postgres: doing a thing: /);
    expect(mapped.cause).toBe(error);
  });

  it("marks outages as temporary and bugs as permanent", () => {
    expect(toStoreError(system("ECONNREFUSED"), "x").temporary).toBe(true);
    expect(toStoreError(sqlState("53100"), "x").temporary).toBe(true);
    expect(toStoreError(sqlState("42601"), "x").temporary).toBe(false);
  });

  it("passes StoreErrors through and honours per-call overrides", () => {
    const own = new StoreError("lease-lost", "gone");
    expect(toStoreError(own, "x")).toBe(own);
    expect(toStoreError(sqlState("23503"), "add account").code).toBe("permanent");
    expect(toStoreError(sqlState("23503"), "add account", { "23503": "not-found" }).code).toBe("not-found");
  });
});
