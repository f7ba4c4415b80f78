import { Resolver } from "node:dns/promises";
import { isIP } from "node:net";
import { runtimeName } from "@mailroom/transport";

/** Where mail for a domain goes (RFC 5321 5.1), or why it cannot go anywhere. */
export type Route =
  | { readonly kind: "hosts"; readonly hosts: readonly MailHost[] }
  | { readonly kind: "failed"; readonly permanent: boolean; readonly status: string; readonly message: string };

export interface MailHost {
  /** The MX name (or the domain itself for the A/AAAA fallback). */
  readonly name: string;
  readonly addresses: readonly string[];
}

export interface ResolverOptions {
  /** "127.0.0.1:5353" style; default the system's servers. */
  readonly servers?: readonly string[];
  readonly timeoutMs?: number;
}

interface DnsError {
  readonly code?: string;
}

const codeOf = (error: unknown): string => (error as DnsError | null)?.code ?? "unknown";

/** "No such record" answers. Anything else (SERVFAIL, timeouts, refused) may work later. */
const NO_DATA = new Set(["ENODATA", "ENOTFOUND"]);
const NXDOMAIN_IS_AMBIGUOUS = runtimeName() === "deno";

export class MailRouter {
  readonly #resolver: Resolver;

  constructor(options: ResolverOptions = {}) {
    this.#resolver = new Resolver({ timeout: options.timeoutMs ?? 5_000, tries: 2 });
    if (options.servers && options.servers.length > 0) this.#resolver.setServers([...options.servers]);
  }

  async route(domain: string): Promise<Route> {
    // An address literal (user@[192.0.2.1]) names its host directly.
    const literal = /^\[(?:IPv6:)?([^\]]+)\]$/i.exec(domain)?.[1];
    if (literal !== undefined && isIP(literal)) return { kind: "hosts", hosts: [{ name: literal, addresses: [literal] }] };

    let records: { exchange: string; priority: number }[];
    try {
      records = await this.#resolver.resolveMx(domain);
    } catch (error) {
      const code = codeOf(error);
      if (!NO_DATA.has(code)) return failed(false, "4.4.3", `MX lookup for ${domain} failed (${code})`);
      // Bun and Deno report "no MX records" as ENOTFOUND too, so NXDOMAIN is only believed once the
      // address lookups below say the same.
      records = [];
    }
    if (records.length === 0) {
      // No MX: the domain itself is the host (RFC 5321 5.1, implicit MX).
      const host = await this.#addresses(domain);
      if ("kind" in host) return host;
      if (host.addresses.length === 0) {
        // Deno answers a failing DNS server (SERVFAIL) like a missing domain. A wrong bounce loses mail;
        // a retry only delays the bounce until the schedule ends, so on Deno "missing" is temporary.
        return failed(!NXDOMAIN_IS_AMBIGUOUS, "5.1.2", `domain ${domain} does not exist or has no MX and no address records`);
      }
      return { kind: "hosts", hosts: [host] };
    }
    // RFC 7505: a single MX of "." at preference 0 says the domain takes no mail at all.
    if (records.some((r) => r.exchange === "" || r.exchange === ".")) {
      return failed(true, "5.1.10", `domain ${domain} does not accept mail (null MX)`);
    }
    // Equal preferences are tried in random order (RFC 5321 5.1) to spread the load.
    const sorted = records.map((r) => ({ r, tie: Math.random() })).sort((a, b) => a.r.priority - b.r.priority || a.tie - b.tie);
    const hosts: MailHost[] = [];
    let temporary: Route | null = null;
    for (const { r } of sorted) {
      const host = await this.#addresses(r.exchange);
      if ("kind" in host) {
        temporary ??= host;
        continue;
      }
      if (host.addresses.length > 0) hosts.push(host);
    }
    if (hosts.length > 0) return { kind: "hosts", hosts };
    return temporary ?? failed(false, "4.4.4", `no MX host of ${domain} has an address`);
  }

  async #addresses(name: string): Promise<MailHost | Extract<Route, { kind: "failed" }>> {
    if (isIP(name)) return { name, addresses: [name] };
    const [v4, v6] = await Promise.allSettled([this.#resolver.resolve4(name), this.#resolver.resolve6(name)]);
    const addresses = [...(v4.status === "fulfilled" ? v4.value : []), ...(v6.status === "fulfilled" ? v6.value : [])];
    if (addresses.length > 0) return { name, addresses };
    for (const result of [v4, v6]) {
      if (result.status === "rejected" && !NO_DATA.has(codeOf(result.reason))) {
        return failed(false, "4.4.3", `address lookup for ${name} failed (${codeOf(result.reason)})`);
      }
    }
    return { name, addresses: [] };
  }
}

function failed(permanent: boolean, status: string, message: string): Extract<Route, { kind: "failed" }> {
  return { kind: "failed", permanent, status, message };
}
