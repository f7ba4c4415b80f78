import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { readFileSync, readSync } from "node:fs";

/**
 * The delivery log's on-disk format: a sequence of records, each
 *
 *   u32 magic "MRLG" | u32 header length | u32 body length | header (UTF-8 JSON) | body | SHA-256
 *
 * (little-endian), the digest covering everything before it. The first record of a file names its
 * owner (body empty); every later one is a delivery: the message octets and the final paths they were
 * published under. A record is only ever acknowledged after an fdatasync that covered it, so a record
 * that is cut short or fails its digest is the unacknowledged tail of a crash: reading stops there.
 */
const MAGIC = 0x474c524d; // "MRLG" read little-endian
const PREFIX = 12;
const DIGEST = 32;
/** Generous bounds for a record's header (paths of a multi-recipient delivery) and body. */
const MAX_HEADER = 16 * 1024 * 1024;
const MAX_BODY = 64 * 1024 * 1024;

export interface LogOwner {
  readonly kind: "owner";
  readonly pid: number;
  /** The kernel's boot id when the log was created ("" where it cannot be read). */
  readonly boot: string;
  readonly started: number;
}

export interface LogDelivery {
  readonly kind: "delivery";
  /** Final paths relative to the store root, `<domain>/<local>/new/<name>`. */
  readonly targets: readonly string[];
  /** The modification time the files carry (what list() reports as receivedAt). */
  readonly mtimeMs: number;
}

export type LogHeader = LogOwner | LogDelivery;

/** The parts of one record, ready for one writev (the body chunks are not copied). */
export function encodeRecord(header: LogHeader, body: readonly Uint8Array[]): Uint8Array[] {
  const json = Buffer.from(JSON.stringify(header), "utf8");
  let bodyLength = 0;
  for (const chunk of body) bodyLength += chunk.length;
  const prefix = Buffer.allocUnsafe(PREFIX);
  prefix.writeUInt32LE(MAGIC, 0);
  prefix.writeUInt32LE(json.length, 4);
  prefix.writeUInt32LE(bodyLength, 8);
  const hash = createHash("sha256").update(prefix).update(json);
  for (const chunk of body) hash.update(chunk);
  return [prefix, json, ...body, hash.digest()];
}

export interface DecodedRecord {
  readonly header: LogHeader;
  readonly body: Buffer;
}

/** Reads records from an open log until the end or the first damaged record. */
export function* readRecords(fd: number): Generator<DecodedRecord> {
  let position = 0;
  const prefix = Buffer.alloc(PREFIX);
  for (;;) {
    if (readFully(fd, prefix, position) < PREFIX) return;
    if (prefix.readUInt32LE(0) !== MAGIC) return;
    const headerLength = prefix.readUInt32LE(4);
    const bodyLength = prefix.readUInt32LE(8);
    if (headerLength > MAX_HEADER || bodyLength > MAX_BODY) return;
    const rest = Buffer.alloc(headerLength + bodyLength + DIGEST);
    if (readFully(fd, rest, position + PREFIX) < rest.length) return;
    const digest = createHash("sha256").update(prefix).update(rest.subarray(0, headerLength + bodyLength)).digest();
    if (!digest.equals(rest.subarray(headerLength + bodyLength))) return;
    let header: LogHeader;
    try {
      header = JSON.parse(rest.subarray(0, headerLength).toString("utf8")) as LogHeader;
    } catch {
      return;
    }
    yield { header, body: rest.subarray(headerLength, headerLength + bodyLength) };
    position += rest.length + PREFIX;
  }
}

function readFully(fd: number, into: Buffer, position: number): number {
  let got = 0;
  while (got < into.length) {
    const n = readSync(fd, into, got, into.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

let bootId: string | undefined;

/** Linux's per-boot random id: a log whose boot id differs was written before the last restart. */
export function currentBootId(): string {
  if (bootId === undefined) {
    try {
      bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    } catch {
      bootId = "";
    }
  }
  return bootId;
}
