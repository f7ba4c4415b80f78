/**
 * Reading a new password: from stdin (`--password-stdin`, for scripts) or typed twice at a terminal
 * without echo. The password only ever goes to hashPassword.
 */
import { ConfigError } from "../errors.js";

export async function readAllStdin(stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString("utf8");
}

/** One trailing line ending is the shell's (`echo pw |`), not part of the password. */
export function passwordFromStdinText(text: string): string {
  const password = text.replace(/\r?\n$/, "");
  if (password.length === 0) throw new ConfigError("the password is empty");
  if (/[\r\n]/.test(password)) throw new ConfigError("the password must be one line");
  return password;
}

/** Reads one line from a TTY in raw mode, echoing nothing. Ctrl-C aborts. */
function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  return new Promise((resolve, reject) => {
    let value = "";
    const wasRaw = stdin.isRaw;
    // Echo goes off before the prompt appears, so that even a fast typist's first key is not shown.
    stdin.setRawMode(true);
    process.stderr.write(question);
    stdin.resume();
    stdin.setEncoding("utf8");
    const done = (error: Error | null): void => {
      stdin.off("data", onData);
      stdin.setRawMode(wasRaw);
      stdin.pause();
      process.stderr.write("\n");
      if (error) reject(error);
      else resolve(value);
    };
    const onData = (data: string): void => {
      for (const ch of data) {
        if (ch === "\r" || ch === "\n") return done(null);
        if (ch === "\u0003") return done(new Error("interrupted"));
        if (ch === "\u0004" && value.length === 0) return done(new Error("no password given"));
        if (ch === "\u007f" || ch === "\b") value = [...value].slice(0, -1).join("");
        else if (ch >= " ") value += ch;
      }
    };
    stdin.on("data", onData);
  });
}

export async function readNewPassword(fromStdin: boolean): Promise<string> {
  if (fromStdin) return passwordFromStdinText(await readAllStdin());
  if (!process.stdin.isTTY) {
    throw new ConfigError("no terminal to ask for the password: pipe it in with --password-stdin");
  }
  const first = await promptHidden("New password: ");
  if (first.length === 0) throw new ConfigError("the password is empty");
  const second = await promptHidden("Repeat password: ");
  if (first !== second) throw new ConfigError("the passwords do not match");
  return first;
}

/** An existing password (to log in with, e.g. `doctor --user`): asked once, or read from stdin. */
export async function readPassword(fromStdin: boolean): Promise<string> {
  if (fromStdin) return passwordFromStdinText(await readAllStdin());
  if (!process.stdin.isTTY) {
    throw new ConfigError("no terminal to ask for the password: pipe it in with --password-stdin");
  }
  const password = await promptHidden("Password: ");
  if (password.length === 0) throw new ConfigError("the password is empty");
  return password;
}
