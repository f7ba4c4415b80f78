import type { CopyReport, VerifyReport } from "./copy.js";
import type { ImportReport } from "./dovecot.js";

/** Lines for the CLI to print after a copy, an import or a verify. Plain text, no colours. */

const LIST_LIMIT = 20;

function some<T>(items: readonly T[], show: (item: T) => string): string {
  const shown = items.slice(0, LIST_LIMIT).map(show).join(", ");
  return items.length > LIST_LIMIT ? `${shown}, … (${items.length - LIST_LIMIT} more)` : shown;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

export function summarizeVerify(report: VerifyReport): string[] {
  const lines = [
    report.ok
      ? `verify: OK, ${report.mailboxes} mailboxes and ${report.messages} messages match`
      : `verify: DIFFERENCES FOUND (${report.mailboxes} mailboxes, ${report.messages} messages checked)`,
  ];
  if (report.missingDomains.length) lines.push(`  domains missing on target: ${some(report.missingDomains, String)}`);
  if (report.missingAccounts.length) lines.push(`  accounts missing on target: ${some(report.missingAccounts, String)}`);
  if (report.accountConflicts.length) {
    lines.push(`  accounts with a different password hash on target: ${some(report.accountConflicts, String)}`);
  }
  if (report.missingAliases.length) {
    lines.push(`  aliases missing on target: ${some(report.missingAliases, (a) => `${a.source} -> ${a.target}`)}`);
  }
  for (const d of report.differences) {
    lines.push(`  ${d.mailbox}: ${d.sourceCount} in source, ${d.targetCount} in target`);
    if (d.missing.length) lines.push(`    missing: ${some(d.missing, String)}`);
    if (d.extra.length) lines.push(`    extra: ${some(d.extra, String)}`);
    if (d.sizeMismatch.length) {
      lines.push(`    size differs: ${some(d.sizeMismatch, (m) => `${m.uid} (${m.source} vs ${m.target})`)}`);
    }
    if (d.retrievalMismatch.length) {
      const when = (at: number | null): string => (at === null ? "never" : new Date(at).toISOString());
      lines.push(
        `    retrieved on one side only: ${some(d.retrievalMismatch, (m) => `${m.uid} (source ${when(m.source)}, target ${when(m.target)})`)}`,
      );
    }
    if (d.contentMismatch.length) lines.push(`    content differs: ${some(d.contentMismatch, String)}`);
  }
  return lines;
}

export function summarizeCopy(report: CopyReport): string[] {
  const t = (x: { copied: number; skipped: number }): string => `${x.copied} copied, ${x.skipped} already there`;
  const m = report.messages;
  const lines = [
    `domains:   ${t(report.domains)}`,
    `accounts:  ${t(report.accounts)}`,
    `aliases:   ${t(report.aliases)}`,
    `mailboxes: ${report.mailboxes}`,
    `messages:  ${m.copied} copied (${formatBytes(report.bytes)}), ${m.skipped} already there` +
      (m.failed ? `, ${m.failed} FAILED` : "") +
      (m.pruned ? `, ${m.pruned} pruned` : "") +
      (m.retrieved ? `, ${m.retrieved} marked retrieved since the last run` : ""),
  ];
  if (report.accountConflicts.length) {
    lines.push(`accounts kept with the target's own password hash: ${some(report.accountConflicts, String)}`);
  }
  if (report.sizeConflicts.length) {
    lines.push(`same UID, different size: ${some(report.sizeConflicts, (c) => `${c.mailbox} ${c.uid}`)}`);
  }
  for (const f of report.failures.slice(0, LIST_LIMIT)) lines.push(`failed: ${f.mailbox} ${f.uid}: ${f.error}`);
  if (report.verify) lines.push(...summarizeVerify(report.verify));
  return lines;
}

export function summarizeImport(report: ImportReport): string[] {
  const lines = [
    `uidvalidity: ${report.uidValidity}`,
    `messages:    ${report.messages} found, ${report.imported} imported (${formatBytes(report.bytes)}), ${report.skipped} already there`,
  ];
  if (report.storedUidls) lines.push(`kept ${report.storedUidls} UIDLs stored in dovecot-uidlist (P field)`);
  if (report.unlisted) lines.push(`${report.unlisted} files were not in dovecot-uidlist yet; numbered as Dovecot would`);
  if (report.missingFiles) lines.push(`${report.missingFiles} dovecot-uidlist entries had no file (already expunged)`);
  if (report.sizeMismatches.length) {
    lines.push(`size differs from the file name's W=: ${some(report.sizeMismatches, (s) => `${s.uid} (${s.expected} vs ${s.actual})`)}`);
  }
  for (const f of report.failures.slice(0, LIST_LIMIT)) lines.push(`failed: ${f.file}: ${f.error}`);
  return lines;
}
