/**
 * The queued copy may start with the `Return-Path:` the SMTP listener writes for stores. It belongs only
 * to the final delivery (RFC 5321 4.4): relays take it off, and local delivery writes a fresh one.
 */

const RETURN_PATH = new TextEncoder().encode("return-path:");
/** A Return-Path line longer than this is not one we wrote; leave the message alone. */
const MAX_LINE = 2048;

export async function* withoutReturnPath(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let head: Uint8Array = new Uint8Array(0);
  let decided = false;
  for await (const chunk of source) {
    if (decided) {
      yield chunk;
      continue;
    }
    head = concat(head, chunk);
    const end = head.indexOf(0x0a);
    if (end < 0 && head.length < MAX_LINE) continue;
    decided = true;
    if (end >= 0 && startsWithIgnoreCase(head, RETURN_PATH)) head = head.subarray(end + 1);
    if (head.length > 0) yield head;
  }
  if (!decided && head.length > 0) yield head;
}

export async function* withReturnPath(sender: string, source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  yield new TextEncoder().encode(`Return-Path: <${sender.replace(/[\r\n<>]/g, "")}>\r\n`);
  yield* withoutReturnPath(source);
}

function startsWithIgnoreCase(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    const b = bytes[i] ?? 0;
    if ((b >= 0x41 && b <= 0x5a ? b + 0x20 : b) !== prefix[i]) return false;
  }
  return true;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
