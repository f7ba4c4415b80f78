import { Buffer } from "node:buffer";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Socket } from "node:net";
import { readAll, type Store } from "@mailroom/store";
import { createSmtpServer, type SmtpServer } from "../../src/index.js";
import { HOST, RawClient, seededStore } from "../helpers.js";
import { trapProcessErrors, waitFor, writeSplit } from "../../../../tests/support/hostile.js";

/**
 * A bounded fuzz run over live SMTP sessions (mx listener, loopback TCP, memory store): random
 * sequences of valid and garbage commands, DATA and BDAT bodies with hostile bytes, all written in
 * random pieces. After each sequence: every reply was well-formed, the session was let go of, Alice's
 * mailbox grew by exactly the messages the server said it accepted for her, Bob's did not change,
 * and a fresh connection still gets a greeting and a NOOP answer.
 */
const SEED = Number(process.env.HOSTILE_SEED ?? 20261127);
const RUNS = Number(process.env.HOSTILE_FUZZ_RUNS ?? 200);
const MAX_MESSAGE = 4096;

type Action =
  | { readonly kind: "line"; readonly bytes: Uint8Array }
  | { readonly kind: "data"; readonly body: Uint8Array }
  | { readonly kind: "bdat"; readonly body: Uint8Array; readonly last: boolean };

const enc = (text: string): Uint8Array => new TextEncoder().encode(text);
const noLf = (bytes: Uint8Array): Uint8Array => bytes.map((b) => (b === 0x0a ? 0x20 : b));

const commandLine: fc.Arbitrary<Uint8Array> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .constantFrom(
        "EHLO client.example",
        "HELO client.example",
        "MAIL FROM:<sender@far.example>",
        "MAIL FROM:<>",
        "MAIL FROM:<sender@far.example> SIZE=100000",
        "MAIL FROM:<sender@far.example> BODY=8BITMIME",
        "RCPT TO:<alice@local.test>",
        "RCPT TO:<alice@local.test>",
        "RCPT TO:<info@local.test>",
        "RCPT TO:<nobody@local.test>",
        "RCPT TO:<someone@far.example>",
        "RCPT TO:<alice%far.example@local.test>",
        "RSET",
        "NOOP",
        "VRFY alice",
        "EXPN staff",
        "HELP",
        "STARTTLS",
        "AUTH PLAIN AGFAYg==",
        "QUIT",
        "BDAT x",
        "BDAT 99999999",
        "mail from:<a@b> size=9999999999999999",
        "RCPT TO:<\"quoted\\\"local\"@local.test>",
      )
      .map(enc),
  },
  { weight: 4, arbitrary: fc.string({ unit: "binary", maxLength: 80 }).map((s) => noLf(enc(s))) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 60 }).map(noLf) },
  { weight: 1, arbitrary: fc.integer({ min: 500, max: 1500 }).map((n) => enc(`NOOP ${"x".repeat(n)}`)) },
);

const messageBody: fc.Arbitrary<Uint8Array> = fc
  .array(
    fc.oneof(
      fc.constantFrom("Subject: fuzz", "", ".", "..", ".\r", "\n.\n", "\r.\r", "x\ny", "From: a@b"),
      fc.string({ unit: "binary", maxLength: 60 }),
    ),
    { maxLength: 12 },
  )
  .map((lines) => enc(lines.join("\r\n")));

/** Clean text lines (no bare CR/LF), so that some messages are accepted too. */
const cleanBody: fc.Arbitrary<Uint8Array> = fc
  .array(fc.oneof(fc.constantFrom("Subject: clean", "", ".", "..", ". x"), fc.string({ maxLength: 50 }).map((t) => t.replace(/[\r\n]/g, ""))), {
    maxLength: 10,
  })
  .map((lines) => enc(lines.join("\r\n")));

const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 10, arbitrary: commandLine.map((bytes): Action => ({ kind: "line", bytes })) },
  {
    weight: 4,
    arbitrary: fc.constantFrom("MAIL FROM:<sender@far.example>", "RCPT TO:<alice@local.test>", "RCPT TO:<info@local.test>").map(
      (text): Action => ({ kind: "line", bytes: enc(text) }),
    ),
  },
  { weight: 3, arbitrary: cleanBody.map((body): Action => ({ kind: "data", body })) },
  { weight: 2, arbitrary: cleanBody.map((body): Action => ({ kind: "bdat", body, last: true })) },
  { weight: 2, arbitrary: messageBody.map((body): Action => ({ kind: "data", body })) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.oneof(messageBody, fc.uint8Array({ maxLength: 300 })), fc.boolean())
      .map(([body, last]): Action => ({ kind: "bdat", body, last })),
  },
);

/** A whole transaction for Alice (which may still be broken by what comes around it). */
const transaction: fc.Arbitrary<Action[]> = fc
  .tuple(cleanBody, fc.boolean())
  .map(([body, bdat]): Action[] => [
    { kind: "line", bytes: enc("MAIL FROM:<sender@far.example>") },
    { kind: "line", bytes: enc("RCPT TO:<alice@local.test>") },
    bdat ? { kind: "bdat", body, last: true } : { kind: "data", body },
  ]);

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 4 });

const sequence = fc.record({
  greet: fc.constantFrom(true, true, true, false),
  actions: fc
    .array(fc.oneof({ weight: 6, arbitrary: action.map((a) => [a]) }, { weight: 1, arbitrary: transaction }), { minLength: 1, maxLength: 12 })
    .chain((groups) => {
      const flat = groups.flat();
      return fc.tuple(...flat.map((a) => fc.tuple(fc.constant(a), cuts)));
    }),
});

let store: Store;
let server: SmtpServer;
let port: number;
let trap: ReturnType<typeof trapProcessErrors>;

beforeAll(async () => {
  trap = trapProcessErrors();
  store = await seededStore();
  server = createSmtpServer({ store, hostname: HOST, limits: { maxMessageBytes: MAX_MESSAGE } });
  port = (await server.listen({ host: "127.0.0.1", port: 0, mode: "mx" })).port;
});

afterAll(async () => {
  await server?.close({ deadlineMs: 500 });
  trap.uninstall();
});

const count = async (mailbox: string): Promise<number> => (await store.mailbox(mailbox).list()).length;

/** One whole reply; every line must be `ddd-` or `ddd ` with a 2xx–5xx code, one code throughout. */
async function reply(client: RawClient, what: string): Promise<string | null> {
  const lines: string[] = [];
  for (;;) {
    const line = await client.line(5000);
    if (line === null) {
      expect(lines, `reply to ${what} cut off`).toEqual([]);
      return null;
    }
    expect(line, `reply to ${what}`).toMatch(/^[2-5]\d\d[ -]/);
    if (lines.length > 0) expect(line.slice(0, 3)).toBe(lines[0]!.slice(0, 3));
    lines.push(line);
    if (line[3] === " ") return lines.join("\n");
  }
}

const cutsFor = (fractions: readonly number[], length: number): number[] =>
  [...new Set(fractions.map((f) => Math.floor(f * length)))].sort((a, b) => a - b);

describe("SMTP fuzz over live sessions", () => {
  it(`survives ${RUNS} random sessions with well-formed replies and exact deliveries`, { timeout: 90_000 }, async () => {
    const started = Date.now();
    const seen = { replies: 0, accepted: 0, refusedMessages: 0, serverClosed: 0 };
    await fc.assert(
      fc.asyncProperty(sequence, async ({ greet, actions }) => {
        const aliceBefore = await count("alice@local.test");
        const bobBefore = await count("bob@local.test");
        let acceptedForAlice = 0;
        // The exact octets each message accepted for Alice must have after the trace headers.
        const expectedBodies: Buffer[] = [];
        const client = await RawClient.connect(port);
        (client.socket as Socket).setNoDelay(true);
        try {
          expect(await reply(client, "greeting")).toMatch(/^220 mx\.local\.test /);
          if (greet) expect(await client.command("EHLO fuzz.example")).toMatch(/^250/);
          // Whether Alice is among the accepted recipients of the open transaction.
          let aliceInTx = false;
          // BDAT chunks the open transaction has taken so far.
          let chunks: Uint8Array[] = [];
          for (const [act, fractions] of actions) {
            let bytes: Uint8Array;
            let what: string;
            if (act.kind === "line") {
              bytes = Buffer.concat([act.bytes, Buffer.from("\r\n")]);
              what = JSON.stringify(Buffer.from(act.bytes).toString("latin1").slice(0, 60));
            } else if (act.kind === "data") {
              client.write("DATA\r\n");
              const go = await reply(client, "DATA");
              seen.replies++;
              if (go === null) {
                seen.serverClosed++;
                break;
              }
              if (!go.startsWith("354")) continue;
              const stuffed = Buffer.from(act.body).toString("latin1").replace(/(^|\r\n)\./g, "$1..");
              bytes = Buffer.concat([Buffer.from(stuffed, "latin1"), Buffer.from("\r\n.\r\n")]);
              what = "end of DATA";
            } else {
              bytes = Buffer.concat([Buffer.from(`BDAT ${act.body.length}${act.last ? " LAST" : ""}\r\n`), act.body]);
              what = "BDAT";
            }
            await writeSplit(client.socket as Socket, bytes, cutsFor(fractions, bytes.length));
            const answer = await reply(client, what);
            seen.replies++;
            if (answer === null) {
              seen.serverClosed++;
              break;
            }
            const code = answer.slice(0, 3);
            if (act.kind === "line") {
              const text = Buffer.from(act.bytes).toString("latin1");
              if (/^RCPT TO:<(alice|info)@local\.test>$/.test(text) && code === "250") aliceInTx = true;
              // A new MAIL, RSET or EHLO starts over.
              if (/^(MAIL|RSET|EHLO|HELO)/i.test(text) && code === "250") {
                aliceInTx = false;
                chunks = [];
              }
              if (code === "221" || code === "421") {
                await client.waitClosed();
                break;
              }
            } else {
              const accepted = /^250 2\.0\.0 OK: message accepted/.test(answer);
              if (accepted && aliceInTx) {
                acceptedForAlice++;
                // DATA: the CRLF before the final dot belongs to the message. BDAT: the chunks as sent.
                expectedBodies.push(
                  act.kind === "data" ? Buffer.concat([act.body, Buffer.from("\r\n")]) : Buffer.concat([...chunks, act.body]),
                );
              }
              if (act.kind === "bdat" && !act.last && code === "250") chunks.push(act.body);
              if (accepted) seen.accepted++;
              else if (act.kind === "data" || act.last) seen.refusedMessages++;
              // End of data, a last chunk, or a chunk over the size limit ends the transaction.
              if (act.kind === "data" || act.last || code === "552") {
                aliceInTx = false;
                chunks = [];
              }
              if (code === "421") {
                await client.waitClosed();
                break;
              }
            }
          }
        } finally {
          client.close();
        }
        await waitFor(() => server.sessionCount === 0, 5000, "the server to end the session");
        expect(await count("alice@local.test")).toBe(aliceBefore + acceptedForAlice);
        const stored = await store.mailbox("alice@local.test").list();
        for (const [i, info] of stored.slice(aliceBefore).entries()) {
          const octets = Buffer.from(await readAll(await store.mailbox("alice@local.test").read(info.uid)));
          const expected = expectedBodies[i]!;
          expect(octets.subarray(0, 80).toString("latin1")).toMatch(/^Return-Path: <(sender@far\.example)?>\r\nReceived: /);
          expect(octets.subarray(octets.length - expected.length).equals(expected), `message ${i + 1} of this run`).toBe(true);
        }
        expect(await count("bob@local.test")).toBe(bobBefore);

        const fresh = await RawClient.connect(port);
        try {
          expect(await reply(fresh, "greeting")).toMatch(/^220 mx\.local\.test ESMTP/);
          expect(await fresh.command("NOOP")).toBe("250 2.0.0 OK");
          expect(await fresh.command("QUIT")).toMatch(/^221 /);
        } finally {
          fresh.close();
        }
        await waitFor(() => server.sessionCount === 0, 5000, "the check session to end");
      }),
      { seed: SEED, numRuns: RUNS, verbose: 1, endOnFailure: true },
    );
    console.log(`SMTP fuzz: ${RUNS} sessions in ${Date.now() - started} ms`, seen);
    expect(trap.errors).toEqual([]);
    expect(Date.now() - started).toBeLessThan(60_000);
    if (RUNS >= 100) {
      expect(seen.accepted).toBeGreaterThan(0);
      expect(seen.refusedMessages).toBeGreaterThan(0);
    }
  });
});
