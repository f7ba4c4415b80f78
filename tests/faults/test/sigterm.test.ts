// Fault 6: SIGTERM with sessions open. The idle SMTP session gets a 421; a POP3 session that QUITs
// within the deadline has its DELEs applied; one that stays silent is dropped at the deadline with
// nothing deleted; the process exits 0 and leaves no lease behind (logins right after restart work).
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, deliver, message, popLogin, serve, sleep, smtpOpen, storeSetup, stores, tempDir, uniqueTag,
  writeConfig, peek,
} from "./harness.js";

afterAll(cleanup);

const DEADLINE_S = 3;

describe.each(stores)("store %s", (kind) => {
  it("421 for idle SMTP, QUIT within the deadline applies, silent POP3 dropped, exit 0, no stale lease", async () => {
    const tag = uniqueTag();
    const dir = tempDir(`sigterm-${kind}`);
    const store = storeSetup(kind, dir, tag);
    const config = writeConfig(dir, store, { shutdownTimeoutSeconds: DEADLINE_S });
    const [polite, silent] = addUsers(config, ["polite", "silent"]);
    let server = await serve(config);
    for (const user of [polite!, silent!]) {
      await deliver(server.smtp, user, [1, 2, 3, 4].map((n) => message(`${n}${user.split("@")[0]}${tag}`, user)));
    }

    const smtp = await smtpOpen(server.smtp);
    const popA = await popLogin(server.pop3, polite!);
    const popB = await popLogin(server.pop3, silent!);
    for (const pop of [popA, popB]) {
      await pop.expect("DELE 1", /^\+OK/);
      await pop.expect("DELE 2", /^\+OK/);
    }

    const termAt = Date.now();
    process.kill(server.pid, "SIGTERM");
    await sleep(300);
    popA.send("QUIT");
    expect(await popA.line("QUIT after SIGTERM")).toMatch(/^\+OK/);

    expect(await smtp.line("421 on shutdown", (DEADLINE_S + 5) * 1000)).toMatch(/^421 /);

    // The silent session ends at the deadline: a last -ERR line at most, then the close.
    const lastWords = await popB.line("drop at the deadline", (DEADLINE_S + 5) * 1000).catch((error: Error) => error.message);
    expect(lastWords).toMatch(/^-ERR|connection closed/);
    const code = await Promise.race([server.exited, sleep((DEADLINE_S + 10) * 1000).then(() => "still running")]);
    expect(code).toBe(0);
    expect(Date.now() - termAt).toBeLessThan((DEADLINE_S + 8) * 1000);
    for (const client of [smtp, popA, popB]) client.close();

    server = await serve(config);
    // Leases: a login right away must not be refused as in use.
    expect(await peek(server.pop3, polite!, (pop) => pop.expect("STAT", /^\+OK/))).toMatch(/^\+OK 2 /);
    expect(await peek(server.pop3, silent!, (pop) => pop.expect("STAT", /^\+OK/))).toMatch(/^\+OK 4 /);
    process.kill(server.pid, "SIGKILL");
    await server.exited;
  });
});
