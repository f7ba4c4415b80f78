// Turns raw driver rows into medians [min–max] per configuration and the ratios the targets are
// stated in (Mailroom over each peer, same run).
import { show, spread, type Spread } from "./stats.js";

type Row = Record<string, string>;

function groupBy(rows: readonly Row[], key: (row: Row) => string): Map<string, Row[]> {
  const groups = new Map<string, Row[]>();
  for (const row of rows) {
    const k = key(row);
    groups.set(k, [...(groups.get(k) ?? []), row]);
  }
  return groups;
}

const col = (rows: readonly Row[], name: string): Spread | null => spread(rows.map((r) => Number(r[name])));
const ratio = (a: Spread | null, b: Spread | null): string => (a && b && b.median ? `${(a.median / b.median).toFixed(2)}×` : "-");

function smtpTable(rows: readonly Row[]): string {
  const groups = groupBy(rows, (r) => `${r.label}|${r.size}|${r.conns}`);
  const lines = [
    "| target | size | conns | accepted msg/s | delivered msg/s | server CPU ms/msg | database CPU ms/msg | vs node peer | vs postfix |",
    "|---|---|---|---|---|---|---|---|---|",
  ];
  for (const [key, group] of groups) {
    const [label, size, conns] = key.split("|");
    const delivered = col(group, "del_rate") ?? col(group, "acc_rate");
    const peer = (name: string) => {
      const other = groups.get(`${name}|${size}|${conns}`);
      return other ? col(other, "del_rate") : null;
    };
    const mine = label!.startsWith("mailroom");
    lines.push(`| ${label} | ${Number(size) / 1024} KB | ${conns} | ${show(col(group, "acc_rate"), 0)} | ${show(delivered, 0)} | ${show(col(group, "cpu_ms_per_msg"), 2)} | ${show(col(group, "db_cpu_ms_per_msg"), 2)} | ${mine ? ratio(delivered, peer("node-smtp-server")) : ""} | ${mine ? ratio(delivered, peer("postfix+dovecot")) : ""} |`);
  }
  return lines.join("\n");
}

function pop3Table(rows: readonly Row[]): string {
  const groups = groupBy(rows, (r) => `${r.label}|${r.clients}`);
  const lines = [
    "| target | clients | msg/s | MB/s | server CPU ms/msg | MB/s vs dovecot | CPU vs dovecot |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const [key, group] of groups) {
    const [label, clients] = key.split("|");
    const kind = label!.replace(/^mailroom-[a-z]+|^postfix\+dovecot/, "");
    const ref = groups.get(`postfix+dovecot${kind}|${clients}`);
    const mine = label!.startsWith("mailroom");
    lines.push(`| ${label} | ${clients} | ${show(col(group, "msg_rate"), 0)} | ${show(col(group, "mb_rate"), 1)} | ${show(col(group, "cpu_ms_per_msg"), 3)} | ${mine && ref ? ratio(col(group, "mb_rate"), col(ref, "mb_rate")) : ""} | ${mine && ref ? ratio(col(group, "cpu_ms_per_msg"), col(ref, "cpu_ms_per_msg")) : ""} |`);
  }
  return lines.join("\n");
}

function idleTable(rows: readonly Row[]): string {
  const groups = groupBy(rows, (r) => `${r.label}|${r.proto}|${r.n}`);
  const lines = ["| target | protocol | connections | greeted | RSS MB | kB per connection (RSS) |", "|---|---|---|---|---|---|"];
  for (const [key, group] of groups) {
    const [label, proto, n] = key.split("|");
    lines.push(`| ${label} | ${proto} | ${n} | ${show(col(group, "greeted"), 0)} | ${show(col(group, "rss_mb"), 1)} | ${show(col(group, "rss_kb_per_conn"), 1)} |`);
  }
  return lines.join("\n");
}

function bigTable(rows: ReadonlyArray<Record<string, number | string>>): string {
  const lines = ["| target | message | RSS growth in (SMTP) | RSS growth out (POP3) |", "|---|---|---|---|"];
  for (const r of rows) {
    lines.push(`| ${r.label} | ${r.megabytes} MB | ${Number(r.growth_in_mb).toFixed(1)} MB | ${Number(r.growth_out_mb).toFixed(1)} MB |`);
  }
  return lines.join("\n");
}

export function renderReport(results: Record<string, unknown>): string {
  const parts = [`# Mailroom benchmark ${String(results.stamp)}`, "", `Mailroom ran with [server] workers = ${String(results.workers ?? "1")}.`, ""];
  if (results.smtp) parts.push("## SMTP ingest", "", smtpTable(results.smtp as Row[]), "");
  if (results.pop3) parts.push("## POP3 RETR", "", pop3Table(results.pop3 as Row[]), "");
  if (results.idle) parts.push("## Idle connections", "", idleTable(results.idle as Row[]), "");
  if (results.big) parts.push("## 50 MB message", "", bigTable(results.big as Array<Record<string, number | string>>), "");
  return parts.join("\n");
}
