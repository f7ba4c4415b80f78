import { createReadStream, promises as fsp } from "node:fs";
import { join } from "node:path";
import { hasStoreErrorCode, isTemporaryError, isValidUid, StoreError, type MailboxId, type Store, type Uid } from "@mailroom/store";
import { lfToCrlf } from "./crlf.js";

/**
 * Import of a Dovecot Maildir (its INBOX: `cur/` and `new/`) that keeps the UIDLs Dovecot's POP3
 * server gave out. Dovecot derives a UIDL from the IMAP UID and UIDVALIDITY kept in
 * `dovecot-uidlist` (default `pop3_uidl_format = %08Xu%08Xv`), or uses one stored in the uidlist's
 * `P` field (left by an earlier migration into Dovecot). We compute the same string and store each
 * message under it.
 */

export interface UidlistRecord {
  readonly uid: number;
  /** The file's base name: everything before the first `:` (the `:2,<flags>` part). */
  readonly filename: string;
  /**
   * Extension fields by their one-letter key, as Dovecot's maildir-uidlist.h defines them: W (virtual
   * size), S (physical size), G (GUID), P (POP3 UIDL), O (POP3 message order).
   */
  readonly extensions: ReadonlyMap<string, string>;
}

export interface DovecotUidlist {
  readonly version: number;
  readonly uidValidity: number;
  readonly nextUid: number;
  readonly guid?: string;
  readonly records: readonly UidlistRecord[];
}

function bad(message: string): StoreError {
  return new StoreError("permanent", `dovecot-uidlist: ${message}`);
}

function positiveInt(text: string | undefined, what: string): number {
  if (text === undefined || !/^\d+$/.test(text)) throw bad(`${what} is not a number: ${JSON.stringify(text)}`);
  return Number(text);
}

/**
 * Parses `dovecot-uidlist` in format version 3 (`3 V<uidvalidity> N<nextuid> G<guid>`, then
 * `<uid> [<key><value> ...] :<filename>`) and the old version 1 (`1 <uidvalidity> <nextuid>`, then
 * `<uid> <filename>`). Throws a "permanent" StoreError for anything else. A record's file name is
 * kept only up to its first `:`: Dovecot writes the name it last saw, flags included
 * (`:1276533073.M242911P3632.kurkku:2,F`), and matches records to files by that base alone.
 */
export function parseDovecotUidlist(text: string): DovecotUidlist {
  const lines = text.split(/\r?\n/).filter((line) => line.length > 0);
  const header = lines.shift();
  if (header === undefined) throw bad("empty file");
  const fields = header.split(" ");
  const version = positiveInt(fields[0], "version");
  let uidValidity: number;
  let nextUid: number;
  let guid: string | undefined;
  if (version === 1 || version === 2) {
    uidValidity = positiveInt(fields[1], "uidvalidity");
    nextUid = positiveInt(fields[2], "next uid");
  } else if (version === 3) {
    const keyed = new Map(fields.slice(1).map((f) => [f.slice(0, 1), f.slice(1)] as const));
    uidValidity = positiveInt(keyed.get("V"), "uidvalidity (V)");
    nextUid = positiveInt(keyed.get("N"), "next uid (N)");
    guid = keyed.get("G");
  } else {
    throw bad(`unsupported version ${version}`);
  }

  const records: UidlistRecord[] = [];
  for (const line of lines) {
    const space = line.indexOf(" ");
    if (space < 0) throw bad(`malformed line ${JSON.stringify(line)}`);
    const uid = positiveInt(line.slice(0, space), "uid");
    const rest = line.slice(space + 1);
    const extensions = new Map<string, string>();
    let filename: string;
    // Version 3 marks the file name with a leading colon; extension fields come before it.
    const marker = rest.startsWith(":") ? 0 : rest.indexOf(" :");
    if (marker >= 0) {
      const extPart = rest.slice(0, marker);
      filename = rest.slice(marker === 0 ? 1 : marker + 2);
      for (const field of extPart.split(" ")) if (field.length > 0) extensions.set(field.slice(0, 1), field.slice(1));
    } else {
      const tokens = rest.split(" ");
      filename = tokens[tokens.length - 1] ?? "";
    }
    const colon = filename.indexOf(":");
    if (colon >= 0) filename = filename.slice(0, colon);
    if (filename.length === 0) throw bad(`no file name for uid ${uid}`);
    records.push({ uid, filename, extensions });
  }
  return { version, uidValidity, nextUid, ...(guid === undefined ? {} : { guid }), records };
}

/** What a UIDL format can refer to. */
export interface UidlVariables {
  readonly uid: number;
  readonly uidValidity: number;
  /** Base file name (without the `:2,` flags). */
  readonly filename: string;
  /** Dovecot's mail GUID: the uidlist's G field, or else the base file name (as Dovecot's Maildir does). */
  readonly guid: string;
}

/** Dovecot's default `pop3_uidl_format`. */
export const DOVECOT_DEFAULT_UIDL_FORMAT = "%08Xu%08Xv";

const LONG_NAMES: Readonly<Record<string, keyof UidlVariables>> = {
  uid: "uid",
  uidvalidity: "uidValidity",
  filename: "filename",
  guid: "guid",
};
const SHORT_NAMES: Readonly<Record<string, keyof UidlVariables>> = { u: "uid", v: "uidValidity", f: "filename", g: "guid" };

/**
 * Expands a Dovecot 2.3 `pop3_uidl_format` the way Dovecot does for the variables a Maildir import
 * can know: `%u` / `%{uid}`, `%v` / `%{uidvalidity}`, `%f` / `%{filename}`, `%g` / `%{guid}`, `%%`;
 * modifiers `X` (decimal → lower-case hex, as Dovecot prints it), `L`, `U` (case); `%0<width>`
 * zero-padding and `%<offset>.<width>` substrings. `%m` (header MD5) is not supported and throws.
 */
export function formatDovecotUidl(format: string, vars: UidlVariables): string {
  let out = "";
  for (let i = 0; i < format.length; i++) {
    const c = format[i]!;
    if (c !== "%") {
      out += c;
      continue;
    }
    i++;
    if (format[i] === "%") {
      out += "%";
      continue;
    }
    let zeroPad = false;
    let width = 0;
    let offset = 0;
    let sign = 1;
    if (format[i] === "-") {
      sign = -1;
      i++;
    }
    if (format[i] === "0") {
      zeroPad = true;
      i++;
    }
    while (i < format.length && /[0-9]/.test(format[i]!)) width = width * 10 + Number(format[i++]);
    if (format[i] === ".") {
      // What looked like a zero-pad flag was the offset 0; a pad flag may follow the dot instead.
      offset = sign * width;
      width = 0;
      zeroPad = false;
      i++;
      if (format[i] === "0") {
        zeroPad = true;
        i++;
      }
      while (i < format.length && /[0-9]/.test(format[i]!)) width = width * 10 + Number(format[i++]);
    }
    const modifiers: string[] = [];
    while (i < format.length && "XLU".includes(format[i]!)) modifiers.push(format[i++]!);
    let key: keyof UidlVariables | undefined;
    let shown: string;
    if (format[i] === "{") {
      const end = format.indexOf("}", i);
      if (end < 0) throw new StoreError("invalid-name", `uidl format ${JSON.stringify(format)}: unclosed %{`);
      shown = format.slice(i + 1, end);
      key = LONG_NAMES[shown];
      i = end;
    } else {
      shown = format[i] ?? "";
      key = SHORT_NAMES[shown];
    }
    if (key === undefined) {
      throw new StoreError(
        "invalid-name",
        `uidl format ${JSON.stringify(format)}: variable %${shown} is not supported (use %u, %v, %f, %g)`,
      );
    }
    let value = String(vars[key]);
    for (const m of modifiers) {
      if (m === "X") {
        if (!/^\d+$/.test(value)) throw new StoreError("invalid-name", `uidl format: %X needs a number, got ${value}`);
        value = BigInt(value).toString(16);
      } else if (m === "L") value = value.toLowerCase();
      else value = value.toUpperCase();
    }
    if (zeroPad) value = value.padStart(width, "0");
    else if (offset !== 0 || width !== 0) {
      const start = offset < 0 ? Math.max(0, value.length + offset) : offset;
      value = width > 0 ? value.slice(start, start + width) : value.slice(start);
    }
    out += value;
  }
  return out;
}

export type ImportProgressEvent = {
  readonly type: "message";
  readonly uid: Uid;
  readonly file: string;
  readonly size: number;
  readonly action: "imported" | "skipped" | "failed";
};

export interface ImportDovecotOptions {
  /** The Maildir: the directory that holds `cur/`, `new/` and `dovecot-uidlist`. */
  readonly maildir: string;
  /** The target mailbox (for an account: `(await store.directory.getAccount(addr)).mailbox`). */
  readonly mailbox: MailboxId;
  /** Dovecot's `pop3_uidl_format` for this user. Default `%08Xu%08Xv`. See {@link formatDovecotUidl}. */
  readonly uidlFormat?: string;
  readonly onProgress?: (event: ImportProgressEvent) => void;
  readonly signal?: AbortSignal;
}

export interface ImportReport {
  readonly uidValidity: number;
  /** Messages found in the Maildir. */
  readonly messages: number;
  readonly imported: number;
  /** Already in the target under the same UIDL (an earlier run). */
  readonly skipped: number;
  readonly bytes: number;
  /**
   * Files Dovecot had not numbered yet (not in `dovecot-uidlist`): no POP3 client saw them through
   * Dovecot, so they got the UIDs Dovecot would have given next.
   */
  readonly unlisted: number;
  /** `dovecot-uidlist` entries whose file is gone (expunged without a uidlist rewrite). */
  readonly missingFiles: number;
  /**
   * UIDLs taken from the uidlist's stored `P` field instead of the format (an empty `P` stands for the
   * base file name, as in Dovecot).
   */
  readonly storedUidls: number;
  /** The file name's `W=` (size Dovecot reported) differs from the CRLF size stored. */
  readonly sizeMismatches: readonly { readonly uid: Uid; readonly file: string; readonly expected: number; readonly actual: number }[];
  readonly failures: readonly { readonly uid: Uid; readonly file: string; readonly error: string }[];
}

interface MaildirFile {
  readonly path: string;
  readonly base: string;
  readonly seen: boolean;
  readonly virtualSize: number | null;
}

interface Planned {
  readonly uidl: Uid;
  readonly file: MaildirFile;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (error) {
    if ((error as { code?: unknown }).code === "ENOENT") return [];
    throw error;
  }
}

async function scanMaildir(maildir: string): Promise<Map<string, MaildirFile>> {
  const files = new Map<string, MaildirFile>();
  for (const sub of ["new", "cur"]) {
    for (const name of await listDir(join(maildir, sub))) {
      if (name.startsWith(".")) continue;
      const colon = name.indexOf(":");
      const base = colon < 0 ? name : name.slice(0, colon);
      const info = colon < 0 ? "" : name.slice(colon + 1);
      const flags = info.startsWith("2,") ? info.slice(2) : "";
      const w = /,W=(\d+)/.exec(base);
      files.set(base, {
        path: join(maildir, sub, name),
        base,
        seen: flags.includes("S"),
        virtualSize: w ? Number(w[1]) : null,
      });
    }
  }
  return files;
}

async function readUidlist(maildir: string): Promise<DovecotUidlist | null> {
  try {
    return parseDovecotUidlist(await fsp.readFile(join(maildir, "dovecot-uidlist"), "utf8"));
  } catch (error) {
    if ((error as { code?: unknown }).code === "ENOENT") return null;
    throw error;
  }
}

/** Imports one Dovecot Maildir into one mailbox, keeping Dovecot's POP3 UIDLs. Safe to re-run. */
export async function importDovecotMaildir(target: Store, options: ImportDovecotOptions): Promise<ImportReport> {
  const { signal } = options;
  const format = options.uidlFormat ?? DOVECOT_DEFAULT_UIDL_FORMAT;
  const emit = options.onProgress ?? (() => {});
  const stat = await fsp.stat(options.maildir).catch(() => null);
  if (!stat?.isDirectory()) throw new StoreError("not-found", `${options.maildir} is not a directory`);

  const files = await scanMaildir(options.maildir);
  // Without a uidlist Dovecot never served this Maildir, so any numbering is one no client has seen;
  // we number the way Dovecot would on its first look.
  const uidlist = (await readUidlist(options.maildir)) ?? {
    version: 3,
    uidValidity: Math.floor(Date.now() / 1000),
    nextUid: 1,
    records: [],
  };

  const planned: Planned[] = [];
  const numbered = new Set<string>();
  let missingFiles = 0;
  let storedUidls = 0;
  // A file listed twice (under its old and its new name, say) keeps the later line, as in Dovecot.
  const latest = new Map(uidlist.records.map((record) => [record.filename, record]));
  for (const record of [...latest.values()].sort((a, b) => a.uid - b.uid)) {
    const file = files.get(record.filename);
    if (!file) {
      missingFiles++;
      continue;
    }
    numbered.add(record.filename);
    // Dovecot's POP3 server prefers this UIDL to pop3_uidl_format whenever the field is there; an empty
    // value is its short form for the base file name. `O` is only the POP3 message order.
    const stored = record.extensions.get("P");
    if (stored !== undefined) storedUidls++;
    const uidl =
      stored !== undefined
        ? stored || file.base
        : formatDovecotUidl(format, {
            uid: record.uid,
            uidValidity: uidlist.uidValidity,
            filename: record.filename,
            guid: record.extensions.get("G") || record.filename,
          });
    planned.push({ uidl, file });
  }
  const unlisted = [...files.values()].filter((f) => !numbered.has(f.base)).sort((a, b) => (a.base < b.base ? -1 : 1));
  let nextUid = uidlist.records.reduce((n, r) => Math.max(n, r.uid + 1), Math.max(uidlist.nextUid, 1));
  for (const file of unlisted) {
    const uidl = formatDovecotUidl(format, {
      uid: nextUid++,
      uidValidity: uidlist.uidValidity,
      filename: file.base,
      guid: file.base,
    });
    planned.push({ uidl, file });
  }

  // Check everything before writing anything: a format that yields duplicates (say `%v` alone)
  // would otherwise silently merge messages.
  const seenUidls = new Set<string>();
  for (const { uidl, file } of planned) {
    if (!isValidUid(uidl)) {
      throw new StoreError("invalid-name", `UIDL ${JSON.stringify(uidl)} for ${file.base} is not 1–70 printable ASCII`);
    }
    if (seenUidls.has(uidl)) {
      throw new StoreError("invalid-name", `UIDL format ${JSON.stringify(format)} gives ${uidl} to two messages`);
    }
    seenUidls.add(uidl);
  }

  const mailbox = target.mailbox(options.mailbox);
  const present = new Set((await mailbox.list()).map((m) => m.uid));
  let imported = 0;
  let skipped = 0;
  let bytes = 0;
  const sizeMismatches: ImportReport["sizeMismatches"][number][] = [];
  const failures: ImportReport["failures"][number][] = [];

  for (const { uidl, file } of planned) {
    signal?.throwIfAborted();
    if (present.has(uidl)) {
      skipped++;
      emit({ type: "message", uid: uidl, file: file.base, size: 0, action: "skipped" });
      continue;
    }
    try {
      const facts = await fsp.stat(file.path);
      // Dovecot keeps a message's received date as its file's mtime. The rename that adds the S flag
      // changes ctime, so that is the best guess for when it was first retrieved.
      const receivedAt = Math.floor(facts.mtimeMs);
      const ctime = Number.isFinite(facts.ctimeMs) ? Math.floor(facts.ctimeMs) : receivedAt;
      const info = await mailbox.append(lfToCrlf(createReadStream(file.path)), {
        uid: uidl,
        receivedAt,
        retrievedAt: file.seen ? Math.max(receivedAt, ctime) : null,
        ...(signal ? { signal } : {}),
      });
      imported++;
      bytes += info.size;
      if (file.virtualSize !== null && file.virtualSize !== info.size) {
        sizeMismatches.push({ uid: uidl, file: file.base, expected: file.virtualSize, actual: info.size });
      }
      emit({ type: "message", uid: uidl, file: file.base, size: info.size, action: "imported" });
    } catch (error) {
      signal?.throwIfAborted();
      if (hasStoreErrorCode(error, "exists")) {
        skipped++;
        emit({ type: "message", uid: uidl, file: file.base, size: 0, action: "skipped" });
        continue;
      }
      const code = (error as { code?: unknown }).code;
      // A store that is down stops the import (re-run it later); a vanished or unreadable file does not.
      if (typeof code !== "string" || !code.startsWith("E")) {
        if (isTemporaryError(error)) throw error;
      }
      failures.push({ uid: uidl, file: file.base, error: error instanceof Error ? error.message : String(error) });
      emit({ type: "message", uid: uidl, file: file.base, size: 0, action: "failed" });
    }
  }

  return {
    uidValidity: uidlist.uidValidity,
    messages: planned.length,
    imported,
    skipped,
    bytes,
    unlisted: unlisted.length,
    missingFiles,
    storedUidls,
    sizeMismatches,
    failures,
  };
}
