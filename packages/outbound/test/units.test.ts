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
