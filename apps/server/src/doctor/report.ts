import type { Check, CheckStatus } from "./types.js";

const SYMBOL: Record<CheckStatus, string> = { ok: "✔", warn: "!", fail: "✘" };

/**
 * Collects checks and prints them. Every line goes through `#mask`, so even a server that echoed the
 * password back (or its AUTH PLAIN encoding) could not get it onto the screen or into a support ticket.
 */
export class Reporter {
  readonly checks: Check[] = [];
  #target = "";
  readonly #out: (line: string) => void;
  readonly #secrets: readonly string[];

  constructor(out: (line: string) => void, secrets: readonly string[]) {
    this.#out = out;
    this.#secrets = secrets.filter((s) => s.length > 0);
  }

  /** Starts a section for one listener. */
  section(target: string, heading: string): void {
    this.#target = target;
    this.#print(heading);
  }

  ok(step: string, message: string): void {
    this.#add("ok", step, message);
  }

  warn(step: string, message: string, hint?: string): void {
    this.#add("warn", step, message, hint);
  }

  fail(step: string, message: string, hint?: string): void {
    this.#add("fail", step, message, hint);
  }

  /** Detail under the previous step (capabilities, certificate fields). */
  info(text: string): void {
    this.#print(`      ${text}`);
  }

  line(text: string): void {
    this.#print(text);
  }

  get failed(): boolean {
    return this.checks.some((c) => c.status === "fail");
  }

  #add(status: CheckStatus, step: string, message: string, hint?: string): void {
    const check: Check = { target: this.#target, step, status, message: this.#mask(message), ...(hint ? { hint: this.#mask(hint) } : {}) };
    this.checks.push(check);
    this.#print(`  ${SYMBOL[status]} ${message}`);
    if (hint) this.#print(`      → ${hint}`);
  }

  #print(text: string): void {
    // What a server sent is shown, but never its control characters: an escape sequence from a hostile
    // or broken host must not clear or rewrite the operator's terminal.
    this.#out(this.#mask(text).replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "?"));
  }

  #mask(text: string): string {
    let result = text;
    for (const secret of this.#secrets) result = result.split(secret).join("********");
    return result;
  }
}
