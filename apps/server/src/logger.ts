/**
 * Structured logs: one JSON object per line on stdout, through pino. The protocol packages get a child
 * of this logger and add their own session ids.
 */
import { pino, type Logger as PinoLogger } from "pino";
import type { Logger } from "@mailroom/store";
import type { LogLevel } from "./config.js";

export interface AppLogger extends Logger {
  child(bindings: Record<string, unknown>): AppLogger;
  /** Writes out anything buffered; call before the process exits. */
  flush(): void;
}

function wrap(inner: PinoLogger): AppLogger {
  // pino's overloads are wider than the Logger shape; route each call explicitly.
  const method =
    (name: "debug" | "info" | "warn" | "error") =>
    (fieldsOrMessage: Record<string, unknown> | string, message?: string): void => {
      if (typeof fieldsOrMessage === "string") inner[name](fieldsOrMessage);
      else if (message === undefined) inner[name](fieldsOrMessage);
      else inner[name](fieldsOrMessage, message);
    };
  return {
    debug: method("debug"),
    info: method("info"),
    warn: method("warn"),
    error: method("error"),
    child: (bindings) => wrap(inner.child(bindings)),
    flush: () => inner.flush(),
  };
}

/** Lines held while the log cannot be written (a full disk under it); more are dropped. */
const MAX_HELD_LOG_OCTETS = 1024 * 1024;

export function createLogger(level: LogLevel, destination: number = 1): AppLogger {
  // Synchronous writes: a line logged just before exit (start-up failure, shutdown) is never lost.
  const stream = pino.destination({ dest: destination, sync: true, maxLength: MAX_HELD_LOG_OCTETS });
  // A log that cannot be written (ENOSPC on the disk under it, a closed pipe) must not take the mail
  // server down: without a listener the stream's error is thrown at whoever logged, and the crash
  // handler's own line throws again. Lines are dropped until writing works again, said once on stderr.
  let failing = false;
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (failing) return;
    failing = true;
    try {
      process.stderr.write(`mailroom: cannot write the log (${error.code ?? error.message}); dropping log lines until it works again\n`);
    } catch {
      // stderr may be the same broken file.
    }
  });
  stream.on("write", () => {
    failing = false;
  });
  const inner = pino(
    {
      level,
      base: { service: "mailroom" },
      // Belt and braces: no code path logs a password, but a mistake must not leak one.
      redact: { paths: ["password", "*.password", "passwordHash", "*.passwordHash"], censor: "[redacted]" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
  return wrap(inner);
}
