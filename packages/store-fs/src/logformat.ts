import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { readSync } from "node:fs";
import { crc32 } from "node:zlib";

/**
 * The delivery log's on-disk format: a sequence of records, each
 *
 *   u32 magic "MRLC" | u32 header length | u32 body length | header (UTF-8 JSON) | body | u32 CRC-32
 *
 * (little-endian), the checksum covering everything before it. The first record of a file names its
 * owner (body empty); every later one is a delivery: the message octets and the final paths they were
 * published under. A record is only ever acknowledged after an fdatasync that covered it, so a record
 * that is cut short or fails its checksum is the unacknowledged tail of a crash: reading stops there.
 *
 * The checksum only has to catch torn and half-written records, which is what a CRC is for (WAL
 * formats use one per record for the same reason); the first version ended each record with a
 * SHA-256 instead (magic "MRLG"), which cost 16 µs per 4 KB message on a CPU without SHA
 * instructions. Such records are still read, so a log left by that version replays after an upgrade.
 *
 * A log file is used again after it is retired (see deliverylog.ts: overwriting octets a file already
 * has makes an fdatasync a plain data flush, where an append also has to commit the file's new size).
 * Each use is a generation with its own `gen`, named in its owner record and in every record of it, and
 * the records of earlier generations that still follow the current ones are never read as current:
 * reading stops at the first record of another generation.
 */
const MAGIC = 0x434c524d; // "MRLC" read little-endian
const MAGIC_SHA256 = 0x474c524d; // "MRLG": the first version's records
const PREFIX = 12;
const CHECKSUM = 4;
const SHA256 = 32;
/** Generous bounds for a record's header (paths of a multi-recipient delivery) and body. */
const MAX_HEADER = 16 * 1024 * 1024;
const MAX_BODY = 64 * 1024 * 1024;

export interface LogOwner {
  readonly kind: "owner";
  readonly pid: number;
  /** The kernel's boot id when the log was created ("" where it cannot be read). */
  readonly boot: string;
  readonly started: number;
  /**
   * The owner's pid namespace and the pid's start time (`processStamp` in @mailroom/store), written
   * since logs could be opened from other containers; absent in older logs and where there is no /proc.
   */
  readonly pidns?: string;
  readonly start?: string;
  /** The generation of the file this record opens (absent in logs from before files were reused). */
  readonly gen?: string;
}

export interface LogDelivery {
  readonly kind: "delivery";
  /** Final paths relative to the store root, `<domain>/<local>/new/<name>`. */
  readonly targets: readonly string[];
  /** The modification time the files carry (what list() reports as receivedAt). */
  readonly mtimeMs: number;
  /** The generation it belongs to: its log's owner record names the current one. */
  readonly gen?: string;
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
  let sum = crc32(json, crc32(prefix));
  for (const chunk of body) sum = crc32(chunk, sum);
  const checksum = Buffer.allocUnsafe(CHECKSUM);
  checksum.writeUInt32LE(sum, 0);
  return [prefix, json, ...body, checksum];
}

export interface DecodedRecord {
  readonly header: LogHeader;
  readonly body: Buffer;
}

/**
 * Reads records from an open log until the end, the first damaged record, or the first record of a
 * generation other than the one its owner record names.
 */
export function* readRecords(fd: number): Generator<DecodedRecord> {
  let position = 0;
  /** The current generation, once the owner record named it. */
  let gen: string | undefined;
  const prefix = Buffer.alloc(PREFIX);
  for (;;) {
    if (readFully(fd, prefix, position) < PREFIX) return;
    const magic = prefix.readUInt32LE(0);
    if (magic !== MAGIC && magic !== MAGIC_SHA256) return;
    const headerLength = prefix.readUInt32LE(4);
    const bodyLength = prefix.readUInt32LE(8);
    if (headerLength > MAX_HEADER || bodyLength > MAX_BODY) return;
    const rest = Buffer.alloc(headerLength + bodyLength + (magic === MAGIC ? CHECKSUM : SHA256));
    if (readFully(fd, rest, position + PREFIX) < rest.length) return;
    const covered = rest.subarray(0, headerLength + bodyLength);
    const stored = rest.subarray(headerLength + bodyLength);
    if (magic === MAGIC) {
      if (crc32(covered, crc32(prefix)) !== stored.readUInt32LE(0)) return;
    } else if (!createHash("sha256").update(prefix).update(covered).digest().equals(stored)) {
      return;
    }
    let header: LogHeader;
    try {
      header = JSON.parse(rest.subarray(0, headerLength).toString("utf8")) as LogHeader;
    } catch {
      return;
    }
    if (position === 0) {
      if (header.kind === "owner") gen = header.gen;
    } else if (gen !== undefined && header.gen !== gen) {
      // An earlier generation's record: this one and all that follow were retired already.
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
