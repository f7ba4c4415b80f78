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
  /** Message octets decoded from this input (empty once a problem was found). */
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
    // Normalising may turn every byte into two.
    const out = new Uint8Array(input.length * 2 + 3);
    let o = 0;
    const emit = (byte: number): void => {
      this.#size++;
      if (this.#size > this.#options.maxBytes) this.#flag("too-big");
      if (this.#problem === null) out[o++] = byte;
    };
    const newline = (): void => {
      emit(CR);
      emit(LF);
      this.#line = 0;
    };
    const bare = (): void => {
      if (this.#options.bareLineEndings === "reject") this.#flag("bare-line-ending");
      newline();
    };
    const text = (byte: number): void => {
      if (byte === CR) {
        this.#state = S.Cr;
        return;
      }
      this.#state = S.Text;
      if (byte === LF) {
        bare();
        return;
      }
      this.#line++;
      if (this.#line > this.#options.maxLineLength - 2) this.#flag("line-too-long");
      emit(byte);
    };

    for (let i = 0; i < input.length; i++) {
      const byte = input[i]!;
      switch (this.#state) {
        case S.LineStart:
          if (byte === DOT) this.#state = S.Dot;
          else text(byte);
          break;
        case S.Text:
          text(byte);
          break;
        case S.Cr:
          if (byte === LF) {
            newline();
            this.#state = this.#options.mode === "dot" ? S.LineStart : S.Text;
          } else {
            bare();
            text(byte);
          }
          break;
        case S.Dot:
          if (byte === CR) this.#state = S.DotCr;
          else if (byte === LF) {
            // `<CRLF>.<LF>`: not the end. Keep the dot; the bare LF is handled like any other.
            text(DOT);
            text(LF);
          } else {
            // Dot-stuffing: the first dot of a line that has more is removed.
            text(byte);
          }
          break;
        case S.DotCr:
          if (byte === LF) {
            this.#state = S.Done;
            return { output: out.subarray(0, o), done: true, rest: input.subarray(i + 1) };
          }
          // `<CRLF>.<CR>` followed by something else: a bare CR after a lone dot, not the end.
          text(DOT);
          bare();
          text(byte);
          break;
        case S.Done:
          return { output: out.subarray(0, o), done: true, rest: input.subarray(i) };
      }
    }
    return { output: out.subarray(0, o), done: this.#state === S.Done, rest: EMPTY };
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
