import * as fs from "node:fs";
import { PRIVATE_FILE } from "./fsutil.js";

/**
 * Promises over the callback file API, for the calls every delivery makes (open, writev, utimes, fsync,
 * close, rename, the directory fsync, the delivery log's writev and fdatasync) and every message read
 * (open, read, close). `fs/promises` wraps each descriptor in a FileHandle and each call in more
 * promise machinery; measured side by side on the delivery sequence, the plain callbacks cost about a
 * third less JavaScript time per message. Everything else in this package stays on `fs/promises`,
 * where a call is rare and readability matters more.
 */

function settle<T>(resolve: (value: T) => void, reject: (error: unknown) => void): (error: Error | null, value: T) => void {
  return (error, value) => (error ? reject(error) : resolve(value));
}

/** For calls whose callback brings only an error. */
function done(resolve: () => void, reject: (error: unknown) => void): (error: Error | null) => void {
  return (error) => (error ? reject(error) : resolve());
}

/** Creates `path`, failing if it exists (`wx`), and returns the descriptor. */
export function openNew(path: string, mode = PRIVATE_FILE): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, "wx", mode, settle(resolve, reject)));
}

/**
 * The open flag that makes every write also flush the file, data and metadata, before it returns
 * (O_SYNC: a write followed by an fsync, in one system call), or null where the platform has none;
 * then a writer calls fsync itself. Node, Bun and Deno all hand it to open(2) (tests/runtimes reads
 * the flags back from the kernel under each): a runtime that dropped it would acknowledge mail before
 * it is on disk.
 */
export const SYNC_WRITES: number | null = typeof fs.constants.O_SYNC === "number" && fs.constants.O_SYNC !== 0 ? fs.constants.O_SYNC : null;

/**
 * Creates `path` like `openNew`, but every write through the descriptor returns only once it is
 * durable (`SYNC_WRITES`, which must not be null).
 */
export function openNewSyncing(path: string, mode = PRIVATE_FILE): Promise<number> {
  const { O_WRONLY, O_CREAT, O_EXCL, O_TRUNC } = fs.constants;
  const flags = O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | (SYNC_WRITES ?? 0);
  return new Promise((resolve, reject) => fs.open(path, flags, mode, settle(resolve, reject)));
}

/** Opens an existing file for writing only, at offset 0, without truncating it. */
export function openForWriting(path: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, fs.constants.O_WRONLY, settle(resolve, reject)));
}

/** Opens an existing file for reading and writing (`r+`), for writes at chosen positions. */
export function openExisting(path: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, "r+", settle(resolve, reject)));
}

/** Opens a file or directory read-only (to read a message, or to fsync a directory). */
export function openReadOnly(path: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(path, "r", settle(resolve, reject)));
}

/** One read at the current position; returns how many bytes came (0 at the end of the file). */
export function readSome(fd: number, buffer: Uint8Array, offset: number, length: number): Promise<number> {
  return new Promise((resolve, reject) => fs.read(fd, buffer, offset, length, null, settle(resolve, reject)));
}

export function setTimesFd(fd: number, when: Date): Promise<void> {
  return new Promise((resolve, reject) => fs.futimes(fd, when, when, done(resolve, reject)));
}

/** One writev at `position` (null: the current position); returns how many bytes the kernel took. */
export function writevAt(fd: number, parts: readonly Uint8Array[], position: number | null): Promise<number> {
  return new Promise((resolve, reject) => fs.writev(fd, parts as Uint8Array[], position, settle(resolve, reject)));
}

export function fdatasyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, done(resolve, reject)));
}

export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fsync(fd, done(resolve, reject)));
}

export function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.close(fd, done(resolve, reject)));
}

export function renamePath(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => fs.rename(from, to, done(resolve, reject)));
}
