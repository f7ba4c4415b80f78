// Several identical servers in front of one store: what is promised when one machine is not enough.
// Two `mailroom serve` processes share one PostgreSQL schema (and again one Redis prefix): mail sent
// to the first is read from the second; two logins to one mailbox across them give exactly one
// [IN-USE]; after kill -9 of the holder, the other server (on the same machine, so it can see that
// the holding process is gone) lets the user in at once, and nothing was lost (the dead session's DELE
// was never applied).
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { admin, dropStoreData, killAll, makeCertificate, serve, step, storeLines, writeConfig, type StoreKind } from "../../support/server.js";
import { LineClient } from "../../support/wire.js";

const password = "scale-out-pw";
let dir: string;
let tls: { cert: string; key: string };

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mailroom-scale-out-"));
  tls = makeCertificate(dir);
});

afterAll(() => {
  killAll();
  rmSync(dir, { recursive: true, force: true });
});

async function send(port: number, subject: string): Promise<void> {
  const smtp = await LineClient.open("127.0.0.1", port);
  await smtp.reply(/^220 /, "greeting");
  await smtp.expect("EHLO client.test", /^250/, "EHLO");
  await smtp.expect("MAIL FROM:<sender@client.test>", /^250 /, "MAIL");
  await smtp.expect("RCPT TO:<shared@example.test>", /^250 /, "RCPT");
  await smtp.expect("DATA", /^354 /, "DATA");
  smtp.send(`Subject: ${subject}\r\nFrom: sender@client.test\r\n\r\nbody of ${subject}\r\n.`);
  await smtp.reply(/^250 /, "end of data");
  await smtp.expect("QUIT", /^221 /, "QUIT");
  smtp.close();
}

/** Connects and logs in; returns the client and the reply to PASS (which may be -ERR). */
async function login(port: number): Promise<{ pop: LineClient; reply: string }> {
  const pop = await LineClient.open("127.0.0.1", port);
  await pop.reply(/^\+OK/, "greeting");
  await pop.expect("USER shared@example.test", /^\+OK/, "USER");
  pop.send(`PASS ${password}`);
  return { pop, reply: await pop.line("PASS reply") };
}

const stores: StoreKind[] = ["postgres", "redis"];

describe.each(stores)("two servers sharing one %s store", (store) => {
  it("delivers on one, serves on the other, and keeps one session per mailbox across both", async () => {
    const tag = `so_${store}_${randomBytes(3).toString("hex")}`;
    const shared = storeLines(store, dir, tag);
    const configA = writeConfig({ dir, name: `${tag}_a`, store: shared, tls, extra: ["allow_plaintext_auth = true"] });
    const configB = writeConfig({ dir, name: `${tag}_b`, store: shared, tls, extra: ["allow_plaintext_auth = true"] });
    admin(configA, ["domain", "add", "example.test"]);
    admin(configA, ["user", "add", "shared@example.test", "--password-stdin"], `${password}\n`);
    const a = await step("start server A", () => serve(configA));
    const b = await step("start server B", () => serve(configB));

    await step("SMTP to A, POP3 from B", async () => {
      await send(a.ports.smtp!, `${tag} one`);
      const { pop, reply } = await login(b.ports.pop3!);
      expect(reply).toMatch(/^\+OK/);
      await pop.expect("STAT", /^\+OK 1 /, "STAT on B");
      await pop.expect("TOP 1 0", /^\+OK/, "TOP");
      expect((await pop.multiline("TOP body")).toString()).toContain(`Subject: ${tag} one`);
      await pop.expect("QUIT", /^\+OK/, "QUIT");
      pop.close();
    });

    await step("concurrent logins on A and B: exactly one [IN-USE]", async () => {
      const [first, second] = await Promise.all([login(a.ports.pop3!), login(b.ports.pop3!)]);
      const replies = [first.reply, second.reply];
      expect(replies.filter((r) => r.startsWith("+OK"))).toHaveLength(1);
      expect(replies.filter((r) => r.startsWith("-ERR [IN-USE]"))).toHaveLength(1);
      for (const { pop, reply } of [first, second]) {
        if (reply.startsWith("+OK")) await pop.expect("QUIT", /^\+OK/, "QUIT");
        pop.close();
      }
    });

    await step("kill -9 of the holder: the other gets in at once, nothing lost", async () => {
      await send(b.ports.smtp!, `${tag} two`);
      const holder = await login(a.ports.pop3!);
      expect(holder.reply).toMatch(/^\+OK 2 /);
      await holder.pop.expect("DELE 1", /^\+OK/, "DELE on A");
      const exited = new Promise((resolve) => a.child.once("exit", resolve));
      a.child.kill("SIGKILL");
      await exited;
      holder.pop.close();
      // The lease names A's process, which is gone: no wait for the TTL. The dead session's DELE was
      // never committed: both messages are still there.
      const { pop, reply } = await login(b.ports.pop3!);
      expect(reply).toMatch(/^\+OK 2 /);
      await pop.expect("QUIT", /^\+OK/, "QUIT");
      pop.close();
    });
    expect(await b.stop()).toBe(0);
    dropStoreData(store, tag);
  });
});
