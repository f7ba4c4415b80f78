// Fault 3: SIGKILL while QUIT applies the deletions. Repeated with small random delays between QUIT
// and the kill. After each restart the DELEs were applied all or none, and survivors keep their UIDL.
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, deliver, message, popLogin, serve, sleep, storeSetup, stores, tempDir, uidl, uniqueTag,
  writeConfig, peek,
} from "./harness.js";

afterAll(cleanup);

const ROUNDS = 3;
const MAILBOX_SIZE = 30;

describe.each(stores)("store %s", (kind) => {
  it(`QUIT killed mid-update applies its DELEs all or none (${ROUNDS} rounds)`, async () => {
    const tag = uniqueTag();
    const dir = tempDir(`quit-${kind}`);
    const store = storeSetup(kind, dir, tag);
    // The default lease TTL (60 s): the killed session's lease names its process, which is gone, so
    // the next round's login gets the mailbox at once and finishes (or finds finished) the update.
    const config = writeConfig(dir, store);
    const [user] = addUsers(config, ["quitter"]);
    let server = await serve(config);
    let sent = 0;
    const outcomes: string[] = [];

    // Calibration: how long an undisturbed QUIT with this many DELEs takes, so that the kills below
    // land anywhere from before the update starts to after it ends.
    await deliver(server.smtp, user!, Array.from({ length: MAILBOX_SIZE }, () => message(`q${sent++}${tag}`, user!, 500)));
    const calibrate = await popLogin(server.pop3, user!);
    for (let n = 1; n <= MAILBOX_SIZE - 3; n++) await calibrate.expect(`DELE ${n}`, /^\+OK/);
    const quitStart = performance.now();
    await calibrate.expect("QUIT", /^\+OK/);
    const quitMs = performance.now() - quitStart;
    calibrate.close();

    for (let round = 0; round < ROUNDS; round++) {
      const before = await peek(server.pop3, user!, uidl);
      const topUp = Array.from({ length: MAILBOX_SIZE - before.size }, () => message(`q${sent++}${tag}`, user!, 500));
      await deliver(server.smtp, user!, topUp);

      const pop = await popLogin(server.pop3, user!);
      const listing = await uidl(pop);
      const all = new Set(listing.values());
      const keep = new Set([...listing.keys()].filter(() => Math.random() < 0.15));
      const deleted = new Set<string>();
      for (const [number, uid] of listing) {
        if (keep.has(number)) continue;
        await pop.expect(`DELE ${number}`, /^\+OK/);
        deleted.add(uid);
      }
      pop.send("QUIT");
      const delay = Math.random() * quitMs * 1.2;
      if (delay >= 1) await sleep(delay);
      process.kill(server.pid, "SIGKILL");
      await server.exited;
      pop.close();

      server = await serve(config);
      const after = new Set((await peek(server.pop3, user!, uidl)).values());
      const none = [...all].every((uid) => after.has(uid)) && after.size === all.size;
      const allApplied = after.size === all.size - deleted.size && [...after].every((uid) => all.has(uid) && !deleted.has(uid));
      const state = { round, before: all.size, deleted: deleted.size, after: after.size, none, allApplied };
      expect(none || allApplied, JSON.stringify(state)).toBe(true);
      outcomes.push(`${allApplied ? "applied" : "none"}@${delay.toFixed(1)}ms`);
    }
    console.log(`[${kind}] undisturbed QUIT took ${quitMs.toFixed(1)} ms; SIGKILL outcomes: ${outcomes.join(", ")}`);
    process.kill(server.pid, "SIGKILL");
    await server.exited;
  });
});
