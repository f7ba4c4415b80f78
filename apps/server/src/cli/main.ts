/**
 * `mailroom`: the command line. Exit codes: 0 done, 1 something failed at run time, 2 the command line
 * or the configuration is wrong. Errors are one line on stderr.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { loadConfig, type ServerConfig } from "../config.js";
import { isConfigError, ConfigError } from "../errors.js";

const USAGE = `Usage: mailroom <command> [options]

Commands:
  serve                          run the SMTP and POP3 server
  user add ADDRESS               add a login (asks for the password, or --password-stdin)
  user passwd ADDRESS            set a new password (asks, or --password-stdin)
  user del ADDRESS               remove a login (its messages stay in the store)
  user list [DOMAIN]             list logins
  domain add|del DOMAIN          accept mail for a domain, or stop
  domain list                    list local domains
  alias add SOURCE TARGET        forward SOURCE (an address or @domain) to TARGET
  alias del SOURCE [TARGET]      remove one forwarding, or all of SOURCE
  alias list [DOMAIN]            list aliases
  queue list [--json]            show the outbound queue (mail waiting for other domains); --json:
                                 one JSON object per item and line, for scripts
  queue retry [--force] ID       make a queued (or dead) item due now; --force also for one being
                                 delivered right now (it may then be sent twice)
  queue retry --all              make every waiting item due now (not dead ones, not ones being
                                 delivered), like postqueue -f
  queue delete ID                remove an item without a bounce
  queue run                      one delivery pass over what is due now, then exit
  migrate                        create or upgrade the store's schema (PostgreSQL)
  store copy --to URL [--from URL] [--verify] [--verify-content] [--prune]
                                 copy everything to another store, keeping every UIDL
  import dovecot --maildir DIR --address ADDRESS [--uidl-format FORMAT]
                                 import a Dovecot Maildir, keeping Dovecot's UIDLs
  doctor [--host NAME] [--ca FILE] [--only LISTENERS] [--user ADDRESS [--password-stdin]]
                                 check every configured listener from the outside, read-only

Options:
  -c, --config FILE              the TOML configuration (default: $MAILROOM_CONFIG, else the
                                 development setup: ./data, localhost, ports 2525/2587/2465/2110/2995)
      --password-stdin           read the password from standard input
  -h, --help                     show this help
  -V, --version                  show the version

Settings can be overridden with MAILROOM_<SECTION>_<KEY> variables, e.g. MAILROOM_STORE_URL.`;

function version(): string {
  const text = readFileSync(new URL("../../package.json", import.meta.url), "utf8");
  return (JSON.parse(text) as { version: string }).version;
}

const stdout = { out: (line: string) => void process.stdout.write(`${line}\n`) };

function usage(message: string): never {
  throw new ConfigError(`${message} (see mailroom --help)`);
}

function arity(positionals: readonly string[], min: number, max: number, synopsis: string): void {
  if (positionals.length < min || positionals.length > max) usage(`usage: mailroom ${synopsis}`);
}

/** Runs one command; resolves with the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: "string", short: "c" },
        "password-stdin": { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        from: { type: "string" },
        to: { type: "string" },
        verify: { type: "boolean" },
        "verify-content": { type: "boolean" },
        prune: { type: "boolean" },
        resume: { type: "boolean" },
        maildir: { type: "string" },
        address: { type: "string" },
        "uidl-format": { type: "string" },
        host: { type: "string" },
        ca: { type: "string" },
        only: { type: "string" },
        user: { type: "string" },
        force: { type: "boolean" },
        json: { type: "boolean" },
        all: { type: "boolean" },
      },
    });
  } catch (error) {
    process.stderr.write(`mailroom: ${(error as Error).message.split("\n")[0]} (see mailroom --help)\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.version) {
    stdout.out(`mailroom ${version()}`);
    return 0;
  }
  const [command, sub, ...rest] = positionals;
  if (values.help || command === "help") {
    stdout.out(USAGE);
    return 0;
  }
  if (command === undefined) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }

  try {
    // Loaded on demand: `--help` or `user list` should not pay for the protocol servers' start-up.
    const admin = await import("./admin.js");
    const file = values.config ?? process.env["MAILROOM_CONFIG"];
    const config = (): ServerConfig => {
      const loaded = loadConfig(file === undefined || file === "" ? {} : { file });
      // `serve` prints its own hint. An admin command run on a production host without --config would
      // otherwise quietly work on ./data instead of the real store.
      if (loaded.development && command !== "serve") {
        process.stderr.write("mailroom: no --config (or MAILROOM_CONFIG): using the development setup's store in ./data\n");
      }
      return loaded;
    };
    const passwordStdin = values["password-stdin"] ?? false;
    const args = sub === undefined ? [] : [sub, ...rest];
    if (passwordStdin && !(command === "user" && (sub === "add" || sub === "passwd")) && command !== "doctor") {
      usage("--password-stdin only goes with user add, user passwd and doctor --user");
    }
    for (const flag of ["host", "ca", "only", "user"] as const) {
      if (values[flag] !== undefined && command !== "doctor") usage(`--${flag} only goes with doctor`);
    }
    if (values.force !== undefined && !(command === "queue" && sub === "retry")) usage("--force only goes with queue retry");
    if (values.json !== undefined && !(command === "queue" && sub === "list")) usage("--json only goes with queue list");
    if (values.all !== undefined && !(command === "queue" && sub === "retry")) usage("--all only goes with queue retry");
    if (values.all && values.force) usage("--all and --force do not go together: --force is for one item, by id");
    const isCopy = command === "store" && sub === "copy";
    const isImport = command === "import" && sub === "dovecot";
    for (const flag of ["from", "to", "verify", "verify-content", "prune", "resume"] as const) {
      if (values[flag] !== undefined && !isCopy) usage(`--${flag} only goes with store copy`);
    }
    for (const flag of ["maildir", "address", "uidl-format"] as const) {
      if (values[flag] !== undefined && !isImport) usage(`--${flag} only goes with import dovecot`);
    }
    switch (command) {
      case "serve":
        arity(args, 0, 0, "serve [--config FILE]");
        return await (await import("./serve-command.js")).runServe(config());
      case "queue": {
        const queue = await import("./queue.js");
        switch (sub) {
          case "list":
            arity(rest, 0, 0, "queue list [--json]");
            await queue.queueList(config(), stdout, values.json ?? false);
            return 0;
          case "retry":
            if (values.all) {
              arity(rest, 0, 0, "queue retry --all (no ID)");
              await queue.queueRetryAll(config(), stdout);
              return 0;
            }
            arity(rest, 1, 1, "queue retry [--force] ID");
            await queue.queueRetry(config(), rest[0]!, stdout, values.force ?? false);
            return 0;
          case "delete":
            arity(rest, 1, 1, "queue delete ID");
            await queue.queueDelete(config(), rest[0]!, stdout);
            return 0;
          case "run":
            arity(rest, 0, 0, "queue run");
            await queue.queueRun(config(), stdout);
            return 0;
          default:
            return usage(`unknown command "queue ${sub ?? ""}"; expected queue list|retry|delete|run`);
        }
      }
      case "migrate":
        arity(args, 0, 0, "migrate [--config FILE]");
        await admin.migrate(config(), stdout);
        return 0;
      case "store": {
        if (sub !== "copy") return usage(`unknown command "store ${sub ?? ""}"; expected store copy`);
        arity(rest, 0, 0, "store copy --to URL [--from URL] [--verify] [--verify-content] [--prune]");
        const { storeCopy } = await import("./migration-commands.js");
        // Resuming is what every run does anyway; --resume is accepted for scripts that say so.
        return await storeCopy(
          config(),
          {
            ...(values.from === undefined ? {} : { from: values.from }),
            ...(values.to === undefined ? {} : { to: values.to }),
            verify: values.verify ?? false,
            verifyContent: values["verify-content"] ?? false,
            prune: values.prune ?? false,
          },
          stdout,
        );
      }
      case "import": {
        if (sub !== "dovecot") return usage(`unknown command "import ${sub ?? ""}"; expected import dovecot`);
        arity(rest, 0, 0, "import dovecot --maildir DIR --address ADDRESS [--uidl-format FORMAT]");
        const { importDovecot } = await import("./migration-commands.js");
        return await importDovecot(
          config(),
          {
            ...(values.maildir === undefined ? {} : { maildir: values.maildir }),
            ...(values.address === undefined ? {} : { address: values.address }),
            ...(values["uidl-format"] === undefined ? {} : { uidlFormat: values["uidl-format"] }),
          },
          stdout,
        );
      }
      case "doctor": {
        arity(args, 0, 0, "doctor [--host NAME] [--ca FILE] [--only LISTENERS] [--user ADDRESS [--password-stdin]]");
        if (passwordStdin && values.user === undefined) usage("--password-stdin goes with --user ADDRESS");
        const names = ["smtp", "submission", "submissions", "pop3", "pop3s"] as const;
        type Name = (typeof names)[number];
        const only = values.only?.split(",").map((n) => n.trim()).filter((n) => n.length > 0);
        for (const name of only ?? []) {
          if (!(names as readonly string[]).includes(name)) usage(`--only: unknown listener "${name}"; expected ${names.join(", ")}`);
        }
        const loaded = config();
        const { readPassword } = await import("./password.js");
        const account = values.user === undefined ? undefined : { address: values.user, password: await readPassword(passwordStdin) };
        const { doctorCommand } = await import("../doctor/command.js");
        return await doctorCommand(loaded, {
          ...(values.host === undefined ? {} : { host: values.host }),
          ...(values.ca === undefined ? {} : { caFile: values.ca }),
          ...(only === undefined ? {} : { only: only as Name[] }),
          ...(account === undefined ? {} : { account }),
          out: stdout.out,
        });
      }
      case "user":
        switch (sub) {
          case "add":
            arity(rest, 1, 1, "user add ADDRESS [--password-stdin]");
            await admin.userAdd(config(), rest[0]!, passwordStdin, stdout);
            return 0;
          case "passwd":
            arity(rest, 1, 1, "user passwd ADDRESS [--password-stdin]");
            await admin.userPasswd(config(), rest[0]!, passwordStdin, stdout);
            return 0;
          case "del":
            arity(rest, 1, 1, "user del ADDRESS");
            await admin.userDel(config(), rest[0]!, stdout);
            return 0;
          case "list":
            arity(rest, 0, 1, "user list [DOMAIN]");
            await admin.userList(config(), rest[0], stdout);
            return 0;
          default:
            return usage(`unknown command "user ${sub ?? ""}"; expected user add|passwd|del|list`);
        }
      case "domain":
        switch (sub) {
          case "add":
            arity(rest, 1, 1, "domain add DOMAIN");
            await admin.domainAdd(config(), rest[0]!, stdout);
            return 0;
          case "del":
            arity(rest, 1, 1, "domain del DOMAIN");
            await admin.domainDel(config(), rest[0]!, stdout);
            return 0;
          case "list":
            arity(rest, 0, 0, "domain list");
            await admin.domainList(config(), stdout);
            return 0;
          default:
            return usage(`unknown command "domain ${sub ?? ""}"; expected domain add|del|list`);
        }
      case "alias":
        switch (sub) {
          case "add":
            arity(rest, 2, 2, "alias add SOURCE TARGET");
            await admin.aliasAdd(config(), rest[0]!, rest[1]!, stdout);
            return 0;
          case "del":
            arity(rest, 1, 2, "alias del SOURCE [TARGET]");
            await admin.aliasDel(config(), rest[0]!, rest[1], stdout);
            return 0;
          case "list":
            arity(rest, 0, 1, "alias list [DOMAIN]");
            await admin.aliasList(config(), rest[0], stdout);
            return 0;
          default:
            return usage(`unknown command "alias ${sub ?? ""}"; expected alias add|del|list`);
        }
      default:
        return usage(`unknown command "${command}"`);
    }
  } catch (error) {
    const message = (error instanceof Error ? error.message : String(error)).split("\n")[0];
    process.stderr.write(`mailroom: ${message}\n`);
    return isConfigError(error) ? 2 : 1;
  }
}
