// Fault 6: SIGKILL while a POP3 session holds a mailbox (the default 60 s lease), on every store. The
// restarted server gives the mailbox to the next login at once: the lease names the killed process,
// which is gone. The session's DELE, never followed by QUIT, deleted nothing.
import { afterAll, describe, expect, it } from "vitest";
import {
  addUsers, cleanup, deliver, killHard, message, popLogin, serve, storeSetup, stores, tempDir, uniqueTag, writeConfig,
} from "./harness.js";

afterAll(cleanup);

describe.each(stores)("store %s", (kind) => {
  it("a mailbox held by a killed server is free again as soon as it restarts", async () => {
    const tag = uniqueTag();
    const dir = tempDir(`lease-${kind}`);
    const config = writeConfig(dir, storeSetup(kind, dir, tag));
    const [user] = addUsers(config, ["holder"]);
    let server = await serve(config);
    await deliver(server.smtp, user!, [message(`a${tag}`, user!), message(`b${tag}`, user!)]);

    const pop = await popLogin(server.pop3, user!);
    await pop.expect("DELE 1", /^\+OK/);
    await killHard(server);
    pop.close();

    server = await serve(config);
    const started = performance.now();
    const again = await popLogin(server.pop3, user!);
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(await again.expect("STAT", /^\+OK/)).toMatch(/^\+OK 2 /);
    // And while this session holds it, a second one is still refused.
    const second = await popLogin(server.pop3, user!).then(
      () => "logged in",
      (error: Error) => error.message,
    );
    expect(second).toMatch(/IN-USE/);
    await again.expect("QUIT", /^\+OK/);
    again.close();
    await killHard(server);
  });
});
