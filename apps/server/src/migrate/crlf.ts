const CR = 0x0d;
const LF = 0x0a;

/**
 * Turns every bare LF into CRLF and leaves existing CRLF pairs alone, chunk by chunk. Dovecot keeps
 * Maildir files with LF line ends but counts (and sends) them as CRLF; storing the CRLF form makes
 * the size Mailroom lists equal to the size Dovecot listed for the same message.
 */
export async function* lfToCrlf(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let previousWasCr = false;
  for await (const chunk of source) {
    if (chunk.length === 0) continue;
    let bare = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (chunk[i] === LF && !(i === 0 ? previousWasCr : chunk[i - 1] === CR)) bare++;
    }
    if (bare === 0) {
      previousWasCr = chunk[chunk.length - 1] === CR;
      yield chunk;
      continue;
    }
    const out = new Uint8Array(chunk.length + bare);
    let o = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b === LF && !(i === 0 ? previousWasCr : chunk[i - 1] === CR)) out[o++] = CR;
      out[o++] = b;
    }
    previousWasCr = chunk[chunk.length - 1] === CR;
    yield out;
  }
}
