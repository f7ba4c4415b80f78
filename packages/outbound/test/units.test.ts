import { describe, expect, it } from "vitest";
import { Buffer } from "node:buffer";
import { fromBytes } from "@mailroom/store";
import { DotStuffer } from "../src/client.js";
import { buildDsn, defaultRetrySchedule, deleteItem, enqueueRelay, formatQueue, formatQueueJson, listQueue, retryAll, queueStats, retryItem, statusOf } from "../src/index.js";
import { parseDsn, withQueue } from "./helpers.js";
import { createMemoryStore } from "@mailroom/store/memory";

const text = (bytes: Uint8Array[]): string => new TextDecoder().decode(Buffer.concat(bytes));

describe("dot-stuffing", () => {
  const message = ".a\r\nb\r\n.\r\n..c\r\nd.\r\n.";
  const expected = "..a\r\nb\r\n..\r\n...c\r\nd.\r\n..\r\n.\r\n";

  it("doubles leading dots and terminates, however the message is split", () => {
    const bytes = new TextEncoder().encode(message);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const stuffer = new DotStuffer();
      const out = [stuffer.push(bytes.subarray(0, cut)), stuffer.push(bytes.subarray(cut)), stuffer.end()];
      expect(text(out)).toBe(expected);
    }
  });

  it("does not add a line break to a message that ends with one", () => {
    const stuffer = new DotStuffer();
    expect(text([stuffer.push(new TextEncoder().encode("x\r\n")), stuffer.end()])).toBe("x\r\n.\r\n");
  });
});

describe("delivery status notifications", () => {
  it("takes the enhanced status from the diagnostic, else the reply class", () => {
    expect(statusOf("550 5.1.1 no such user")).toBe("5.1.1");
    expect(statusOf("5.1.10 domain does not accept mail")).toBe("5.1.10");
    expect(statusOf("554 transaction failed")).toBe("5.0.0");
    expect(statusOf("451-4.7.1 greylisted")).toBe("4.7.1");
  });

  it("builds a multipart/report with the original headers only", () => {
    const dsn = parseDsn(
      buildDsn({
        hostname: "mail.ours.test",
        to: "alice@ours.test",
        arrivalDate: new Date(Date.UTC(2026, 10, 27, 3, 4, 5)),
        failed: [
          { address: "a@far.test", diagnostic: "550 5.1.1 unknown" },
          { address: "b@far.test", diagnostic: "5.1.10 domain far.test does not accept mail (null MX)" },
        ],
        originalHeaders: "Subject: hi\nFrom: alice@ours.test",
      }),
    );
    expect(dsn.headers).toContain("Auto-Submitted: auto-replied");
    expect(dsn.perMessage).toEqual({ "reporting-mta": "dns; mail.ours.test", "arrival-date": "Fri, 27 Nov 2026 03:04:05 +0000" });
    expect(dsn.recipients).toEqual([
      { "final-recipient": "rfc822; a@far.test", action: "failed", status: "5.1.1", "diagnostic-code": "smtp; 550 5.1.1 unknown" },
      {
        "final-recipient": "rfc822; b@far.test",
        action: "failed",
        status: "5.1.10",
        "diagnostic-code": "X-Mailroom; 5.1.10 domain far.test does not accept mail (null MX)",
      },
    ]);
    expect(dsn.parts[2]).toEqual({ contentType: "text/rfc822-headers", body: "Subject: hi\r\nFrom: alice@ours.test\r\n" });
  });

  it("keeps the RFC 3464 report, byte for byte, for an original that did not come with SMTPUTF8", () => {
    const input = {
      hostname: "mail.ours.test",
      to: "alice@ours.test",
      arrivalDate: new Date(Date.UTC(2026, 10, 27, 3, 4, 5)),
      date: new Date(Date.UTC(2026, 10, 27, 4, 0, 0)),
      failed: [
        { address: "a@far.test", diagnostic: "550 5.1.1 unknown" },
        { address: "b@far.test", diagnostic: "5.1.10 domain far.test does not accept mail (null MX)" },
      ],
      originalHeaders: "Subject: hi\nFrom: alice@ours.test",
    };
    // The boundary and the Message-ID are random: everything else is fixed.
    const fixed = (text: string): string => text.replace(/=_mailroom_[0-9a-f]{24}/g, "=_B").replace(/^Message-ID: <[^>]*>/m, "Message-ID: <ID>");
    const expected = [
      "From: Mail Delivery System <MAILER-DAEMON@mail.ours.test>",
      "To: <alice@ours.test>",
      "Subject: Undelivered Mail Returned to Sender",
      "Date: Fri, 27 Nov 2026 04:00:00 +0000",
      "Message-ID: <ID>",
      "Auto-Submitted: auto-replied",
      "MIME-Version: 1.0",
      'Content-Type: multipart/report; report-type=delivery-status; boundary="=_B"',
      "",
      "This is a MIME-encapsulated delivery status notification.",
      "",
      "--=_B",
      "Content-Type: text/plain; charset=utf-8",
      "Content-Description: Notification",
      "",
      "This is the mail system at mail.ours.test.",
      "",
      "Your message could not be delivered to the following recipients:",
      "",
      "  <a@far.test>: 550 5.1.1 unknown",
      "  <b@far.test>: 5.1.10 domain far.test does not accept mail (null MX)",
      "",
      "The headers of your message are attached below.",
      "",
      "--=_B",
      "Content-Type: message/delivery-status",
      "Content-Description: Delivery report",
      "",
      "Reporting-MTA: dns; mail.ours.test",
      "Arrival-Date: Fri, 27 Nov 2026 03:04:05 +0000",
      "",
      "Final-Recipient: rfc822; a@far.test",
      "Action: failed",
      "Status: 5.1.1",
      "Diagnostic-Code: smtp; 550 5.1.1 unknown",
      "",
      "Final-Recipient: rfc822; b@far.test",
      "Action: failed",
      "Status: 5.1.10",
      "Diagnostic-Code: X-Mailroom; 5.1.10 domain far.test does not accept mail (null MX)",
      "",
      "--=_B",
      "Content-Type: text/rfc822-headers",
      "Content-Description: Undelivered message headers",
      "",
      "Subject: hi",
      "From: alice@ours.test",
      "",
      "--=_B--",
      "",
    ].join("\r\n");
    expect(fixed(buildDsn(input))).toBe(expected);
    expect(fixed(buildDsn({ ...input, utf8: false }))).toBe(expected);
  });

  it("builds an RFC 6533 report for an SMTPUTF8 original: global types, utf-8 addresses, the UTF-8 headers as they were", () => {
    const text = buildDsn({
      hostname: "mail.ours.test",
      to: "j\u00f6rg@ours.test",
      arrivalDate: new Date(Date.UTC(2026, 10, 27, 3, 4, 5)),
      failed: [
        { address: "j\u00fcrgen+tag=x@far.test", diagnostic: "550 5.1.1 unknown" },
        { address: "\u4f8b\u5b50@far.test", diagnostic: "550 5.1.1 unknown" },
        { address: "b@far.test", diagnostic: "5.1.10 domain far.test does not accept mail (null MX)" },
      ],
      originalHeaders: "From: J\u00f6rg <j\u00f6rg@ours.test>\nSubject: Gr\u00fc\u00dfe \u4f8b\u5b50",
      utf8: true,
    });
    const dsn = parseDsn(text);
    // RFC 6522: the report type names the second part's subtype.
    expect(dsn.contentType).toMatch(/^multipart\/report; report-type=global-delivery-status; boundary=/);
    expect(dsn.headers).toContain("To: <j\u00f6rg@ours.test>");
    // The parts carry raw UTF-8: labelled 8bit, not the default 7bit.
    expect(dsn.headers).toContain("\r\nContent-Transfer-Encoding: 8bit");
    expect(dsn.parts.map((p) => p.contentType)).toEqual(["text/plain", "message/global-delivery-status", "message/global-headers"]);
    expect(text.match(/^Content-Transfer-Encoding: 8bit\r$/gm)).toHaveLength(4);
    expect(dsn.perMessage).toEqual({ "reporting-mta": "dns; mail.ours.test", "arrival-date": "Fri, 27 Nov 2026 03:04:05 +0000" });
    // utf-8-addr-unitext (RFC 6533 section 3): UTF-8 as it is; "+" and "=" (like backslash, space and controls) as \x{HEX}.
    expect(dsn.recipients.map((r) => r["final-recipient"])).toEqual([
      "utf-8; j\u00fcrgen\\x{2B}tag\\x{3D}x@far.test",
      "utf-8; \u4f8b\u5b50@far.test",
      "rfc822; b@far.test",
    ]);
    expect(dsn.recipients.map((r) => r.status)).toEqual(["5.1.1", "5.1.1", "5.1.10"]);
    expect(dsn.parts[0]!.body).toContain("  <j\u00fcrgen+tag=x@far.test>: 550 5.1.1 unknown\r\n");
    expect(dsn.parts[2]!.body).toBe("From: J\u00f6rg <j\u00f6rg@ours.test>\r\nSubject: Gr\u00fc\u00dfe \u4f8b\u5b50\r\n");
  });

  it("builds the RFC 6533 report for a UTF-8 address even when the original is not marked SMTPUTF8", () => {
    const dsn = parseDsn(
      buildDsn({
        hostname: "mail.ours.test",
        to: "alice@ours.test",
        arrivalDate: new Date(),
        failed: [{ address: "j\u00fcrgen@far.test", diagnostic: "5.6.7 no SMTPUTF8" }],
        originalHeaders: "Subject: hi",
      }),
    );
    expect(dsn.parts.map((p) => p.contentType)).toEqual(["text/plain", "message/global-delivery-status", "message/global-headers"]);
    expect(dsn.recipients[0]!["final-recipient"]).toBe("utf-8; j\u00fcrgen@far.test");
  });
});

describe("retry schedule", () => {
  it("doubles from 5 minutes to 8 hours and stops at five days", () => {
    const schedule = defaultRetrySchedule();
    expect(schedule.slice(0, 8)).toEqual([5, 10, 20, 40, 60, 120, 240, 480].map((m) => m * 60_000));
    expect(schedule.reduce((a, b) => a + b, 0)).toBe(5 * 24 * 3600_000);
    expect(Math.max(...schedule)).toBe(8 * 3600_000);
  });
});

describe("queue admin", () => {
  it("lists, formats, retries and deletes items", async () => {
    const store = withQueue(createMemoryStore());
    const now = Date.now();
    const a = await enqueueRelay(store.queue, { sender: "alice@ours.test", recipients: ["x@far.test", "y@far.test"] }, fromBytes("Subject: a\r\n\r\nhi\r\n"));
    await enqueueRelay(store.queue, { sender: "", recipients: ["z@far.test"] }, fromBytes("x"), { notBefore: now + 3_600_000 });
    // Same millisecond: the store may list them either way round.
    const rows = [...(await listQueue(store.queue, now + 125_000))].sort((x, y) => y.size - x.size);
    expect(rows.map((r) => [r.id === a.id, r.sender, r.pending, r.size])).toEqual([
      [true, "alice@ours.test", ["x@far.test", "y@far.test"], 18],
      [false, "", ["z@far.test"], 1],
    ]);
    const table = formatQueue(rows, now + 125_000);
    expect(table).toContain(`${a.id}  18 B  age 2m  0 attempts  due now  from <alice@ours.test>\n    <x@far.test>\n    <y@far.test>\n`);
    expect(table).toMatch(/next in 5\dm {2}from <>/);
    expect(table.endsWith("-- 2 items, 19 B\n")).toBe(true);
    expect(await queueStats(store.queue, now + 125_000)).toEqual({ queued: 2, dead: 0, oldestAgeMs: expect.any(Number), bytes: 19 });

    // An item a worker holds right now says so.
    const [claim] = await store.queue.claim({ holder: "a worker", ttlMs: 60_000 });
    expect(claim?.item.id).toBe(a.id);
    const busy = await listQueue(store.queue, now + 125_000);
    expect(busy.find((r) => r.id === a.id)?.inDelivery).toBe(true);
    expect(formatQueue(busy, now + 125_000)).toContain(`${a.id}  18 B  age 2m  0 attempts  in delivery  from <alice@ours.test>\n`);
    expect(busy.find((r) => r.id !== a.id)?.inDelivery).toBe(false);
    const json = formatQueueJson(busy).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(json.find((o) => o["id"] === a.id)).toEqual({
      id: a.id,
      state: "queued",
      inDelivery: true,
      sender: "alice@ours.test",
      pending: ["x@far.test", "y@far.test"],
      delivered: 0,
      failed: 0,
      size: 18,
      attempts: 0,
      queuedAt: new Date(a.createdAt).toISOString(),
      nextAttemptAt: new Date(a.nextAttemptAt).toISOString(),
      lastError: null,
    });
    expect(formatQueueJson([])).toEqual([]);

    const [, later] = rows;
    await retryItem(store.queue, later!.id);
    expect((await store.queue.get(later!.id))!.nextAttemptAt).toBeLessThanOrEqual(Date.now());
    await deleteItem(store.queue, a.id);
    expect((await listQueue(store.queue)).map((r) => r.id)).toEqual([later!.id]);
    await expect(deleteItem(store.queue, a.id)).rejects.toMatchObject({ code: "not-found" });
    expect(formatQueue([])).toBe("Mail queue is empty\n");
  });

  it("retries every waiting item at once, leaving dead ones and ones in delivery alone", async () => {
    const store = withQueue(createMemoryStore());
    const later = Date.now() + 3_600_000;
    const waiting = await enqueueRelay(store.queue, { sender: "a@ours.test", recipients: ["w@far.test"] }, fromBytes("w"), { notBefore: later });
    const sending = await enqueueRelay(store.queue, { sender: "a@ours.test", recipients: ["s@far.test"] }, fromBytes("s"));
    const [claim] = await store.queue.claim({ holder: "a worker", ttlMs: 60_000 });
    expect(claim?.item.id).toBe(sending.id);
    const given = await enqueueRelay(store.queue, { sender: "a@ours.test", recipients: ["d@far.test"] }, fromBytes("d"));
    const [last] = await store.queue.claim({ holder: "a worker", ttlMs: 60_000 });
    await store.queue.deadLetter(last!, { error: "550 no such user" });
    expect(await retryAll(store.queue)).toEqual({ retried: 1, inDelivery: 1, dead: 1 });
    expect((await store.queue.get(waiting.id))!.nextAttemptAt).toBeLessThanOrEqual(Date.now());
    expect((await store.queue.get(given.id))!.state).toBe("dead");
    await store.queue.renew(claim!);
  });
});
