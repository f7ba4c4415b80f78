import { Buffer } from "node:buffer";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLoginThrottle, fromBytes } from "@mailroom/store";
import { parseCommand } from "../../src/parser.js";
import { ALICE, BOB, LineClient, startServer, type Running } from "../helpers.js";
import { trapProcessErrors, waitFor, writeSplit } from "../../../../tests/support/hostile.js";

/**
 * A bounded fuzz run over live POP3 sessions (loopback TCP, memory store): random sequences of valid
 * and garbage lines, written in random pieces, sometimes pipelined. After each sequence the server must
 * have answered every line with a well-formed reply (or closed), let go of the session, kept the
 * mailbox unchanged unless a QUIT committed DELEs, and still serve a fresh connection.
 */
const SEED = Number(process.env.HOSTILE_SEED ?? 20261127);
const RUNS = Number(process.env.HOSTILE_FUZZ_RUNS ?? 200);

const b64 = (text: string): string => Buffer.from(text, "utf8").toString("base64");

const garbageText = fc.oneof(
  fc.string({ unit: "binary", maxLength: 60 }),
  fc.string({ unit: fc.constantFrom("\r", "\0", " ", ".", "A", "+", "-", "é", "\x7f", "\t"), maxLength: 40 }),
);
const noLf = (bytes: Uint8Array): Uint8Array => bytes.map((b) => (b === 0x0a ? 0x20 : b));
const msg = fc.integer({ min: 0, max: 5 });

/** One line as bytes (without its line ending). */
const line: fc.Arbitrary<Uint8Array> = fc
  .oneof(
    { weight: 10, arbitrary: fc.constantFrom("STAT", "LIST", "UIDL", "NOOP", "RSET", "CAPA", "QUIT", "APOP x y", "STLS", "AUTH", "*") },
    { weight: 10, arbitrary: fc.tuple(fc.constantFrom("LIST", "UIDL", "RETR", "DELE"), msg).map(([k, n]) => `${k} ${n}`) },
    { weight: 3, arbitrary: fc.tuple(msg, fc.integer({ min: 0, max: 3 })).map(([n, l]) => `TOP ${n} ${l}`) },
    // Deletions committed by QUIT are the one change the mailbox may see: make them common.
    { weight: 4, arbitrary: fc.constantFrom("DELE 1", "DELE 2", "DELE 3", "QUIT") },
    {
      weight: 6,
      arbitrary: fc.constantFrom(
        `USER ${ALICE.login}`,
        `PASS ${ALICE.password}`,
        `USER ${BOB.login}`,
        `PASS ${BOB.password}`,
        "USER nobody@example.test",
        "PASS wrong",
        `AUTH PLAIN ${b64(`\0${ALICE.login}\0${ALICE.password}`)}`,
        `AUTH PLAIN ${b64(`\0${ALICE.login}\0nope`)}`,
        "AUTH PLAIN !!!",
        "AUTH LOGIN",
        b64(ALICE.login),
        b64(ALICE.password),
        "AUTH CRAM-MD5",
      ),
    },
    { weight: 6, arbitrary: garbageText },
    { weight: 1, arbitrary: fc.integer({ min: 240, max: 400 }).map((n) => "X".repeat(n)) },
    { weight: 1, arbitrary: fc.constantFrom("retr 99999999999", "list -1", "TOP 1", "dele 0", "\0STAT", "STAT\0", "STAT ") },
  )
  .map((text) => new TextEncoder().encode(text))
  .chain((bytes) => fc.oneof({ weight: 6, arbitrary: fc.constant(bytes) }, { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map(noLf) }));

interface Step {
  readonly lines: Uint8Array[];
  /** Line ending for this step: CRLF, or a bare LF (accepted by the server). */
  readonly lf: boolean;
  /** Cut positions within the step's bytes, as fractions. */
  readonly cuts: number[];
}

const step: fc.Arbitrary<Step> = fc.record({
  lines: fc.array(line, { minLength: 1, maxLength: 3 }),
  lf: fc.boolean(),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 5 }),
});

const sequence = fc.record({
  login: fc.constantFrom<"none" | "alice" | "bob">("none", "alice", "alice", "bob"),
  steps: fc.array(step, { minLength: 1, maxLength: 12 }),
});

const MULTILINE = new Set(["CAPA", "RETR", "TOP"]);

let running: Running;
let trap: ReturnType<typeof trapProcessErrors>;

beforeAll(async () => {
  trap = trapProcessErrors();
  running = await startServer({
    // No delays or refusals here: this run is about parsing and state, not guessing (see brute-force).
    loginThrottle: createLoginThrottle({ freeFailures: Number.POSITIVE_INFINITY, refuseAfter: Number.POSITIVE_INFINITY }),
  });
});

afterAll(async () => {
  await running?.close();
  trap.uninstall();
});

async function aliceUids(): Promise<string[]> {
  return (await running.store.mailbox(ALICE.login).list()).map((m) => m.uid);
}

/** Reads one reply to `text`, checks its form, and says what the server did. */
async function readReply(client: LineClient, text: string, inSasl: boolean): Promise<{ status: string | null; sasl: boolean }> {
  const status = await client.line(5000);
  if (status === null) return { status: null, sasl: false };
  expect(status, `reply to ${JSON.stringify(text)}`).toMatch(/^(\+OK|-ERR)( |$)|^\+ /);
  if (status.startsWith("+ ")) {
    // A SASL challenge only answers AUTH or a step of it.
    expect(inSasl || /^auth /i.test(text)).toBe(true);
    return { status, sasl: true };
  }
  if (status.startsWith("+OK") && !inSasl) {
    const parsed = parseCommand(text);
    const multi =
      parsed.kind === "command" &&
      (MULTILINE.has(parsed.command.name) ||
        ((parsed.command.name === "LIST" || parsed.command.name === "UIDL") && parsed.command.msg === null) ||
        (parsed.command.name === "AUTH" && parsed.command.mechanism === null));
    if (multi) {
      for (;;) {
        const data = await client.line(5000);
        expect(data, `multi-line reply to ${JSON.stringify(text)} ended early`).not.toBeNull();
        if (data === ".") break;
      }
    }
  }
  return { status, sasl: false };
}

describe("POP3 fuzz over live sessions", () => {
  it(`survives ${RUNS} random sessions with well-formed replies and an unchanged mailbox`, { timeout: 90_000 }, async () => {
    const started = Date.now();
    // Coverage of the run itself: a fuzz run that never deletes or never gets cut off proves little.
    const seen = { lines: 0, committedDeletes: 0, serverClosed: 0, retrieved: 0 };
    await fc.assert(
      fc.asyncProperty(sequence, async ({ login, steps }) => {
        const before = await aliceUids();
        const client = await LineClient.connect(running.port);
        client.socket.setNoDelay(true);
        try {
          expect(await client.line()).toMatch(/^\+OK /);
          let user: string | null = null;
          if (login !== "none") {
            const who = login === "alice" ? ALICE : BOB;
            client.write(`USER ${who.login}\r\nPASS ${who.password}\r\n`);
            expect(await client.line()).toBe("+OK send PASS");
            expect(await client.line()).toMatch(/^\+OK /);
            user = who.login;
          }
          // The model: which of Alice's messages a QUIT would delete now, and what it did delete.
          let marked = new Set<string>();
          let committed = new Set<string>();
          let sasl = false;
          let pendingUser: string | null = null;
          let closed = false;
          for (const s of steps) {
            if (closed) break;
            const ending = s.lf ? "\n" : "\r\n";
            const bytes = Buffer.concat(s.lines.flatMap((l) => [Buffer.from(l), Buffer.from(ending)]));
            const cuts = [...new Set(s.cuts.map((f) => Math.floor(f * bytes.length)))].sort((a, b) => a - b);
            await writeSplit(client.socket, bytes, cuts);
            for (const l of s.lines) {
              // What the server reads: the bytes before LF, without one CR right before it.
              const text = new TextDecoder().decode(l.at(-1) === 0x0d && s.lf ? l.subarray(0, -1) : l);
              const wasSasl = sasl;
              const { status, sasl: challenged } = await readReply(client, text, sasl);
              seen.lines++;
              if (status === null) {
                seen.serverClosed++;
                closed = true;
                break;
              }
              sasl = challenged;
              // Only Alice's credentials are in the SASL vocabulary.
              if (wasSasl && user === null && status.startsWith("+OK")) user = ALICE.login;
              const parsed = wasSasl ? null : parseCommand(text);
              const command = parsed?.kind === "command" ? parsed.command : null;
              if (!command || !status.startsWith("+OK")) continue;
              if (user === null) {
                if (command.name === "USER") pendingUser = command.user;
                if ((command.name === "PASS" || command.name === "AUTH") && status.startsWith("+OK")) {
                  user = command.name === "PASS" ? pendingUser : ALICE.login;
                }
                continue;
              }
              if (user !== ALICE.login) continue;
              if (command.name === "DELE") marked.add(before[command.msg - 1]!);
              if (command.name === "RSET") marked = new Set();
              if (command.name === "QUIT") committed = marked;
              if (command.name === "RETR") seen.retrieved++;
            }
          }
          // The session must be let go of promptly, whatever state it was left in.
          client.destroy();
          await waitFor(() => running.server.sessionCount === 0, 5000, "the server to end the session");
          expect(await aliceUids()).toEqual(before.filter((uid) => !committed.has(uid)));
          seen.committedDeletes += committed.size;
        } finally {
          client.destroy();
        }

        // A fresh connection is served normally.
        const fresh = await LineClient.connect(running.port);
        try {
          expect(await fresh.line()).toMatch(/^\+OK pop\.example\.test /);
          fresh.write(`USER ${BOB.login}\r\nPASS ${BOB.password}\r\nNOOP\r\nQUIT\r\n`);
          expect(await fresh.line()).toBe("+OK send PASS");
          expect(await fresh.line()).toMatch(/^\+OK /);
          expect(await fresh.line()).toBe("+OK");
          expect(await fresh.line()).toMatch(/^\+OK /);
          await fresh.waitClosed();
        } finally {
          fresh.destroy();
        }
        await waitFor(() => running.server.sessionCount === 0, 5000, "the check session to end");

        // Keep Alice's mailbox stocked for the next sequence.
        const left = (await aliceUids()).length;
        for (let i = left; i < 3; i++) {
          await running.store.mailbox(ALICE.login).append(fromBytes(`Subject: refill ${i}\r\n\r\n.dot line\r\nbody\r\n`));
        }
      }),
      { seed: SEED, numRuns: RUNS, verbose: 1, endOnFailure: true },
    );
    expect(trap.errors).toEqual([]);
    expect(Date.now() - started).toBeLessThan(60_000);
    console.log(`POP3 fuzz: ${RUNS} sessions in ${Date.now() - started} ms`, seen);
    if (RUNS >= 100) {
      expect(seen.committedDeletes).toBeGreaterThan(0);
      expect(seen.serverClosed).toBeGreaterThan(0);
      expect(seen.retrieved).toBeGreaterThan(0);
    }
  });
});
