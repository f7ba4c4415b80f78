const LF = 0x0a;

/**
 * Times lines, not reads: once the peer has sent the first octet of a line, the rest of it (up to the
 * LF) must arrive within the limit. A socket's idle timeout restarts on every octet, so a client that
 * sends one byte a minute would hold a connection (and a slot under the connection limits) for ever;
 * this is the per-line limit Exim applies by default and Postfix under stress.
 *
 * It only looks at where each read ends, so it costs one comparison per read, and a timer exists only
 * while a line is pending. Time spent with reading paused (the server is busy, not the client) does
 * not count.
 */
export class LineDeadline {
  readonly #expired: () => void;
  #limitMs = 0;
  /** When the pending line's first octet arrived; 0 when no line is pending. */
  #pendingSince = 0;
  #paused = false;
  #timer: ReturnType<typeof setTimeout> | null = null;

  constructor(expired: () => void) {
    this.#expired = expired;
  }

  /** 0 turns the deadline off (binary input such as a BDAT chunk has no lines). */
  set(limitMs: number): void {
    this.#limitMs = limitMs;
    if (limitMs === 0) this.#forget();
  }

  /** Notes one read from the peer. */
  observe(chunk: Uint8Array): void {
    if (this.#limitMs === 0 || chunk.length === 0) return;
    if (chunk[chunk.length - 1] === LF) {
      this.#pendingSince = 0;
    } else if (this.#pendingSince === 0 || chunk.indexOf(LF) !== -1) {
      // A line starts in this read (the one before it, if any, ended here).
      this.#pendingSince = Date.now();
      this.#timer ??= this.#arm(this.#limitMs);
    }
  }

  pause(): void {
    this.#paused = true;
  }

  /** Reading again: a pending line gets the whole limit from now, as its octets may have waited on us. */
  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    if (this.#pendingSince !== 0) this.#pendingSince = Date.now();
  }

  stop(): void {
    this.#forget();
    this.#limitMs = 0;
  }

  #forget(): void {
    this.#pendingSince = 0;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #arm(ms: number): ReturnType<typeof setTimeout> {
    const timer = setTimeout(() => this.#check(), ms);
    timer.unref?.();
    return timer;
  }

  // The timer is not moved on every read: when it fires it looks at the line pending now and, if
  // that line still has time, waits for the rest of it.
  #check(): void {
    this.#timer = null;
    if (this.#pendingSince === 0 || this.#limitMs === 0) return;
    if (this.#paused) {
      this.#timer = this.#arm(this.#limitMs);
      return;
    }
    const left = this.#pendingSince + this.#limitMs - Date.now();
    if (left > 0) {
      this.#timer = this.#arm(left);
      return;
    }
    this.#pendingSince = 0;
    this.#expired();
  }
}
