/**
 * The DATA (and BDAT) decoder: a pure, incremental byte machine. It is fed the bytes as they arrive and
 * gives back the message octets, so a message of any size passes through in bounded memory.
 *
 * In "dot" mode (DATA) it removes dot-stuffing and ends only at a real <CRLF>.<CRLF>. A line counts as
 * starting only after a real CRLF: a bare LF or CR never opens a line, so none of the SMTP smuggling
 * sequences (`\n.\n`, `\n.\r\n`, `\r.\r\n`, `\r\n.\n`, `\r\n.\r`) can end a message early and make the
 * rest look like a second one. In "raw" mode (BDAT) the length is known and nothing is unstuffed.
 *
 * Bare CR and bare LF are either turned into CRLF ("normalize") or recorded as a problem ("reject"):
 * then the decoder stops giving out octets but keeps looking for the end, so the session stays in sync
 * and can refuse the message once it is over.
 */
export type DataProblem = "bare-line-ending" | "line-too-long" | "too-big";

export interface DataDecoderOptions {
  readonly mode: "dot" | "raw";
  readonly bareLineEndings: "reject" | "normalize";
  /** Longest line in octets including CRLF (RFC 5321 4.5.3.1.6: 1000). */
  readonly maxLineLength: number;
  /** Largest message in octets (after unstuffing). */
  readonly maxBytes: number;
}

export interface DecodeResult {
  /**
   * Message octets decoded from this input (empty once a problem was found). Usually a view of the
   * input itself, so it shares the input's memory: do not change the input while this is in use.
   */
  readonly output: Uint8Array;
  /** The end marker was seen (dot mode). */
  readonly done: boolean;
  /** Octets after the end marker: the next pipelined commands. */
  readonly rest: Uint8Array;
}

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const EMPTY = new Uint8Array(0);
const CRLF = new Uint8Array([CR, LF]);
const DOT_BYTE = new Uint8Array([DOT]);

/**
 * What one push gives out: runs of the input kept as views, plus the few octets the decoder puts in
 * (a CRLF for a bare line ending, a dot it had held back). Glued into one array only when needed.
 */
class Output {
  #parts: Uint8Array[] = [];
  #length = 0;
  #runStart = 0;
  #runEnd = 0;
  constructor(private readonly input: Uint8Array) {}

  /** Gives out input[from, to). */
  keep(from: number, to: number): void {
    if (to <= from) return;
    if (from === this.#runEnd && this.#runEnd > this.#runStart) {
      this.#runEnd = to;
      return;
    }
    this.#endRun();
    this.#runStart = from;
    this.#runEnd = to;
  }

  add(bytes: Uint8Array): void {
    this.#endRun();
    // A copy, so that no reader ever holds one of the shared constants.
    this.#parts.push(bytes.slice());
    this.#length += bytes.length;
  }

  result(): Uint8Array {
    this.#endRun();
    if (this.#parts.length === 0) return EMPTY;
    if (this.#parts.length === 1) return this.#parts[0]!;
    const joined = new Uint8Array(this.#length);
    let at = 0;
    for (const part of this.#parts) {
      joined.set(part, at);
      at += part.length;
    }
    return joined;
  }

  #endRun(): void {
    if (this.#runEnd > this.#runStart) {
      this.#parts.push(this.input.subarray(this.#runStart, this.#runEnd));
      this.#length += this.#runEnd - this.#runStart;
    }
    this.#runStart = this.#runEnd = 0;
  }
}

// Plain constants rather than an enum: type-stripping runtimes (Deno, Bun, Node's strip mode) accept them.
const S = { LineStart: 0, Text: 1, Cr: 2, Dot: 3, DotCr: 4, Done: 5 } as const;
type S = (typeof S)[keyof typeof S];

export class DataDecoder {
  readonly #options: DataDecoderOptions;
  #state: S;
  #line = 0;
  #size = 0;
  #problem: DataProblem | null = null;

  constructor(options: DataDecoderOptions) {
    this.#options = options;
    this.#state = options.mode === "dot" ? S.LineStart : S.Text;
  }

  /** The first problem found, or null. */
  get problem(): DataProblem | null {
    return this.#problem;
  }

  /** Message octets so far (what was or would have been given out). */
  get size(): number {
    return this.#size;
  }

  get done(): boolean {
    return this.#state === S.Done;
  }

  push(input: Uint8Array): DecodeResult {
    // The output is usually the input minus the end marker, so it is gathered as runs of the input
    // (no copy) and only glued together when something was removed or inserted in between.
    const out = new Output(input);
    const options = this.#options;
    const lineStart = options.mode === "dot" ? S.LineStart : S.Text;
    /**
     * Accounts for n octets given out (counted even after a problem, see `size`); returns how many of
     * them may still be given out, flagging "too-big" at the first one over the limit.
     */
    const room = (n: number): number => {
      const sizeRoom = Math.max(0, options.maxBytes - this.#size);
      this.#size += n;
      if (this.#problem !== null) return 0;
      if (n > sizeRoom) this.#flag("too-big");
      return Math.min(n, sizeRoom);
    };
    const newline = (crAt: number, lfAt: number): void => {
      const fits = room(2);
      if (fits === 2 && crAt >= 0 && crAt + 1 === lfAt) out.keep(crAt, lfAt + 1);
      else if (fits > 0) out.add(CRLF.subarray(0, fits));
      this.#line = 0;
    };
    const bare = (): void => {
      if (options.bareLineEndings === "reject") this.#flag("bare-line-ending");
      newline(-1, -1);
    };
    /** A dot held back at the start of a line that turned out to be text after all. */
    const dotText = (): void => {
      this.#state = S.Text;
      this.#line++;
      if (this.#line > options.maxLineLength - 2) this.#flag("line-too-long");
      if (room(1) === 1) out.add(DOT_BYTE);
    };
    /** Where the CR held in state Cr sits in this input (-1: it came in an earlier chunk). */
    let crAt = -1;
    /** The next CR and LF at or after the current position (-1: none left; -2: not looked for yet). */
    let nextCr = -2;
    let nextLf = -2;

    let i = 0;
    while (i < input.length) {
      const byte = input[i]!;
      switch (this.#state) {
        case S.LineStart:
          if (byte === DOT) {
            this.#state = S.Dot;
            i++;
          } else {
            // Any other octet starts the line's text: handled as text on the next turn.
            this.#state = S.Text;
          }
          continue;
        case S.Text: {
          if (byte === CR) {
            this.#state = S.Cr;
            crAt = i++;
            continue;
          }
          if (byte === LF) {
            this.#state = S.Text;
            bare();
            i++;
            continue;
          }
          if (this.#problem === null) {
            // The hottest path: whole well-formed lines (text, CRLF, and a next line that does not start
            // with a dot) taken as one run, with no state changes in between. Anything else (a bare CR
            // or LF, an overlong line, the size limit, a dot) stops it and is handled octet by octet.
            const from = i;
            let at = i;
            let line = this.#line;
            for (;;) {
              if (nextCr !== -1 && nextCr < at) nextCr = input.indexOf(CR, at);
              if (nextLf !== -1 && nextLf < at) nextLf = input.indexOf(LF, at);
              if (nextCr < 0 || nextLf !== nextCr + 1) break;
              if (line + (nextCr - at) > options.maxLineLength - 2) break;
              const next = nextLf + 1;
              if (this.#size + (next - from) > options.maxBytes) break;
              at = next;
              line = 0;
              if (at >= input.length || (lineStart === S.LineStart && input[at] === DOT)) break;
            }
            if (at > from) {
              this.#size += at - from;
              this.#line = 0;
              out.keep(from, at);
              this.#state = lineStart;
              i = at;
              continue;
            }
          }
          // The hot path: a run of text up to the next CR or LF, accounted and kept in one go.
          // indexOf is native and scans far faster than a loop here; each position found is reused
          // until the decoder has passed it, so the input is scanned once for each of CR and LF.
          if (nextCr !== -1 && nextCr < i) nextCr = input.indexOf(CR, i);
          if (nextLf !== -1 && nextLf < i) nextLf = input.indexOf(LF, i);
          const end = Math.min(nextCr === -1 ? input.length : nextCr, nextLf === -1 ? input.length : nextLf);
          const n = end - i;
          const lineRoom = Math.max(0, options.maxLineLength - 2 - this.#line);
          const sizeRoom = Math.max(0, options.maxBytes - this.#size);
          this.#line += n;
          this.#size += n;
          if (this.#problem === null) {
            const fits = Math.min(n, lineRoom, sizeRoom);
            out.keep(i, i + fits);
            if (fits < n) this.#flag(lineRoom <= sizeRoom ? "line-too-long" : "too-big");
          }
          this.#state = S.Text;
          i = end;
          continue;
        }
        case S.Cr:
          if (byte === LF) {
            newline(crAt, i);
            this.#state = lineStart;
            i++;
          } else {
            bare();
            this.#state = S.Text;
            // the octet after the bare CR is handled as text on the next turn
          }
          crAt = -1;
          continue;
        case S.Dot:
          if (byte === CR) {
            this.#state = S.DotCr;
            i++;
          } else if (byte === LF) {
            // `<CRLF>.<LF>`: not the end. Keep the dot; the bare LF is handled like any other.
            dotText();
          } else {
            // Dot-stuffing: the first dot of a line that has more is removed.
            this.#state = S.Text;
          }
          continue;
        case S.DotCr:
          if (byte === LF) {
            this.#state = S.Done;
            return { output: out.result(), done: true, rest: input.subarray(i + 1) };
          }
          // `<CRLF>.<CR>` followed by something else: a bare CR after a lone dot, not the end.
          dotText();
          bare();
          this.#state = S.Text;
          continue;
        case S.Done:
          return { output: out.result(), done: true, rest: input.subarray(i) };
      }
    }
    return { output: out.result(), done: this.#state === S.Done, rest: EMPTY };
  }

  /** Raw mode: the last chunk arrived. Flushes a CR held back in case an LF followed. */
  finish(): Uint8Array {
    if (this.#state !== S.Cr) return EMPTY;
    this.#state = S.Text;
    const before = this.#problem;
    const out: number[] = [];
    if (this.#options.bareLineEndings === "reject") this.#flag("bare-line-ending");
    else {
      this.#size += 2;
      if (this.#size > this.#options.maxBytes) this.#flag("too-big");
    }
    if (before === null && this.#problem === null) out.push(CR, LF);
    return Uint8Array.from(out);
  }

  #flag(problem: DataProblem): void {
    this.#problem ??= problem;
  }
}
