// Fault 5 (store fs only): the Maildir's file system fills up. A new message is refused with
// 452 4.3.1, the messages accepted before stay byte-exact, and delivery works again once space is freed.
// With the free-space reserve (min_free_mb), mail stops before the disk is full, so a POP3 user can
// still log in and delete.
import { execFileSync } from "node:child_process";
import { mkdirSync, statfsSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, deliver, message, onCleanup, peek, popLogin, retr, serve, sleep, smtpOpen, smtpSend, tempDir, uidl,
  uniqueTag, writeConfig,
} from "./harness.js";

afterAll(cleanup);

function run(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: "pipe", timeout: 30_000 });
    return true;
  } catch {
    return false;
  }
}

/** An 8 MB file system at `dir`: tmpfs if allowed, else a loop-mounted ext4 image; null with a reason. */
function smallFilesystem(dir: string, scratch: string): string | null {
  mkdirSync(dir, { recursive: true });
  if (run("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", dir])) {
    onCleanup(() => run("umount", ["-l", dir]));
    return null;
  }
  const image = join(scratch, "small.img");
  if (run("truncate", ["-s", "8M", image]) && run("mkfs.ext4", ["-q", "-F", image]) && run("mount", ["-o", "loop", image, dir])) {
    onCleanup(() => run("umount", ["-l", dir]));
    return null;
  }
  return "neither a tmpfs nor a loop-mounted ext4 image could be mounted here (needs root / CAP_SYS_ADMIN)";
}

function free(dir: string): number {
  const stats = statfsSync(dir);
  return stats.bavail * stats.bsize;
}

describe("store fs", () => {
  it("full disk (no reserve) → 452 4.3.1, earlier mail intact, works again after freeing space", async (context) => {
    const tag = uniqueTag();
    const scratch = tempDir("diskfull");
    const mount = join(scratch, "small");
    const reason = smallFilesystem(mount, scratch);
    if (reason) {
      console.log(`disk-full test skipped: ${reason}`);
      context.skip();
      return;
    }
    // The reserve off: this is what the file system's own ENOSPC does.
    const store = { kind: "fs" as const, section: `url = "maildir:${join(mount, "mail")}"\nmin_free_mb = 0`, visibleCopies: () => [] };
    const config = writeConfig(scratch, store);
    const [user] = addUsers(config, ["full"]);
    const server = await serve(config);

    const early = [message(`early1${tag}`, user!, 20_000), message(`early2${tag}`, user!, 50_000)];
    await deliver(server.smtp, user!, early);

    // Leave less room than the next message needs, but some, so that small metadata writes still fit.
    const filler = join(mount, "filler");
    writeFileSync(filler, Buffer.alloc(Math.max(0, free(mount) - 32 * 1024)));
    const client = await smtpOpen(server.smtp);
    const refused = await smtpSend(client, user!, message(`big${tag}`, user!, 200_000));
    expect(refused).toMatch(/^452 4\.3\.1 /);
    // The session stays usable after the refusal.
    await client.expect("NOOP", /^250/);

    unlinkSync(filler);
    const accepted = await smtpSend(client, user!, message(`late${tag}`, user!, 200_000));
    expect(accepted).toMatch(/^250 /);
    await client.expect("QUIT", /^221/);
    client.close();

    const bodies = await peek(server.pop3, user!, async (pop) => {
      const numbers = [...(await uidl(pop)).keys()];
      const out: string[] = [];
      for (const number of numbers) out.push(await retr(pop, number));
      return out;
    });
    expect(bodies).toHaveLength(3);
    // Each stored message is the received trace headers followed by exactly the bytes sent.
    expect(bodies[0]!.endsWith(early[0]!)).toBe(true);
    expect(bodies[1]!.endsWith(early[1]!)).toBe(true);
    expect(bodies[2]).toContain(`Message-ID: <late${tag}@faults.test>`);
    expect(bodies.join("")).not.toContain(`big${tag}`);
    process.kill(server.pid, "SIGKILL");
    await server.exited;
  });

  it("with min_free_mb, mail stops at 452 before the disk is full, and a POP3 user can still log in and delete", async (context) => {
    const tag = uniqueTag();
    const scratch = tempDir("diskreserve");
    const mount = join(scratch, "small");
    const reason = smallFilesystem(mount, scratch);
    if (reason) {
      console.log(`disk-reserve test skipped: ${reason}`);
      context.skip();
      return;
    }
    const store = { kind: "fs" as const, section: `url = "maildir:${join(mount, "mail")}"\nmin_free_mb = 2`, visibleCopies: () => [] };
    const config = writeConfig(scratch, store);
    const [user] = addUsers(config, ["reserve"]);
    const server = await serve(config);

    // Fill the disk with mail until the server refuses it.
    const client = await smtpOpen(server.smtp);
    let accepted = 0;
    let refusal = "";
    for (let i = 0; i < 200 && refusal === ""; i++) {
      const answer = await smtpSend(client, user!, message(`fill${i}${tag}`, user!, 200_000));
      if (answer.startsWith("250 ")) accepted++;
      else refusal = answer;
    }
    expect(refusal).toMatch(/^452 4\.3\.1 /);
    expect(accepted).toBeGreaterThan(5);
    // Refused while the reserve is still there, not by the file system running out.
    expect(free(mount)).toBeGreaterThan(1024 * 1024);

    // The user logs in (a lease file), deletes everything and QUITs (a journal, then the unlinks).
    const pop = await popLogin(server.pop3, user!);
    const listed = await uidl(pop);
    expect(listed.size).toBe(accepted);
    for (const number of listed.keys()) await pop.expect(`DELE ${number}`, /^\+OK/);
    await pop.expect("QUIT", /^\+OK/);
    pop.close();
    expect(await peek(server.pop3, user!, async (again) => (await uidl(again)).size)).toBe(0);

    // Room again: once free space is measured anew (at most a second), mail is taken.
    await sleep(1_200);
    expect(await smtpSend(client, user!, message(`after${tag}`, user!, 200_000))).toMatch(/^250 /);
    await client.expect("QUIT", /^221/);
    client.close();
    process.kill(server.pid, "SIGKILL");
    await server.exited;
  });
});
