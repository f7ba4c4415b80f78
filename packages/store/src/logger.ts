/**
 * The logging shape every Mailroom package accepts: the subset of pino's API it uses. Pass a pino
 * logger, or anything with these methods; the default is silent.
 */
export interface LogFn {
  (fields: Record<string, unknown>, message?: string): void;
  (message: string): void;
}

export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  /** A logger whose lines all carry `bindings` (a session id, a listener name). */
  child(bindings: Record<string, unknown>): Logger;
}

const nothing = (): void => {};

export const silentLogger: Logger = {
  debug: nothing,
  info: nothing,
  warn: nothing,
  error: nothing,
  child: () => silentLogger,
};
