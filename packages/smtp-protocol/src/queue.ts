/**
 * Turns the bytes the session pushes into the `AsyncIterable<Uint8Array>` a store pulls from. The
 * session waits for `space()` before it reads more from the socket, so a slow store slows the client
 * down (TCP backpressure) instead of making the server buffer the message.
 */
export class ChunkQueue implements AsyncIterable<Uint8Array> {
  #chunks: Uint8Array[] = [];
  #bytes = 0;
  #ended = false;
  #error: unknown = null;
  #detached = false;
  #wakeReader: (() => void) | null = null;
  #wakeWriter: (() => void) | null = null;

  constructor(readonly highWater = 256 * 1024) {}

  get bytes(): number {
    return this.#bytes;
  }

  push(chunk: Uint8Array): void {
    if (this.#ended || this.#detached || chunk.length === 0) return;
    // Kept without a copy: the chunks are views of buffers the transport handed over for good (see
    // ConnectionEvents.data), and nothing writes to them after this.
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    this.#wake();
  }

  end(): void {
    this.#ended = true;
    this.#wake();
  }

  /** The reader's next pull throws `error` (client gone, message refused). */
  fail(error: unknown): void {
    this.#error = error;
    this.#ended = true;
    this.#chunks = [];
    this.#bytes = 0;
    this.#wake();
  }

  /** The reader is gone (finished early or failed): drop whatever comes. */
  detach(): void {
    this.#detached = true;
    this.#chunks = [];
    this.#bytes = 0;
    this.#wake();
  }

  /** Resolves once the reader took enough that the queue is under its high-water mark. */
  space(): Promise<void> {
    if (this.#bytes < this.highWater || this.#detached || this.#ended) return Promise.resolve();
    return new Promise((resolve) => {
      this.#wakeWriter = resolve;
    });
  }

  #wake(): void {
    const reader = this.#wakeReader;
    this.#wakeReader = null;
    reader?.();
    if (this.#bytes < this.highWater || this.#detached || this.#ended) {
      const writer = this.#wakeWriter;
      this.#wakeWriter = null;
      writer?.();
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.#error !== null) throw this.#error;
      const chunk = this.#chunks.shift();
      if (chunk) {
        this.#bytes -= chunk.length;
        this.#wake();
        yield chunk;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((resolve) => {
        this.#wakeReader = resolve;
      });
    }
  }
}
