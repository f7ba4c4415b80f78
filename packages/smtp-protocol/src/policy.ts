import {
  lookupsFor,
  normalizeAddress,
  normalizeDomain,
  resolveRecipient,
  type Account,
  type Directory,
  type MailboxId,
  type RecipientLookups,
  type Store,
} from "@mailroom/store";
import type { Path } from "./commands.js";
import { isPostmaster } from "./parser.js";
import { R, rejectReply, type Reply } from "./replies.js";
import type { ListenerMode, RecipientVerdict, SessionInfo, SmtpHooks } from "./types.js";

/**
 * Who may send what to whom. An MX listener accepts mail only for local recipients and never relays;
 * a submission listener accepts mail only from authenticated users, only with a sender address that
 * belongs to them, and hands recipients on other domains to `onRelay` (refused until an outbound queue
 * exists).
 */
export interface PolicyContext {
  readonly store: Store;
  readonly hostname: string;
  readonly mode: ListenerMode;
  readonly hooks: SmtpHooks;
  readonly info: SessionInfo;
  readonly relay: "queue" | "refuse";
  /** Shared by every session of the server. */
  readonly postmaster: PostmasterLookup;
}

/** Where a recipient's copy goes (see RecipientVerdict). */
export interface Target {
  readonly mailboxes: readonly MailboxId[];
  readonly relay: boolean;
  /** The address to record and route with, where it differs from the client's: `<postmaster>` qualified. */
  readonly address?: string;
}

export type Decision<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reply: Reply };

const refuse = (reply: Reply): Decision<never> => ({ ok: false, reply });

async function isLocalDomain(lookups: RecipientLookups, domain: string): Promise<boolean> {
  let normal: string;
  try {
    normal = normalizeDomain(domain);
  } catch {
    // Address literals and malformed names are never ours: we do not accept mail "for an IP".
    return false;
  }
  return lookups.hasDomain(normal);
}

export async function checkSender(ctx: PolicyContext, path: Path): Promise<Decision<string>> {
  if (ctx.mode === "submission") {
    const user = ctx.info.user;
    if (!user) return refuse(R.authRequired());
    if (path.address === "") return refuse(R.nullSenderRefused());
    if (!(await ownsAddress(ctx.store, user, path.address))) return refuse(R.senderNotOwned());
  }
  if (ctx.hooks.onMailFrom) {
    const verdict = await ctx.hooks.onMailFrom(path.address, ctx.info);
    if (!("ok" in verdict)) return refuse(rejectReply("mail", verdict));
  }
  return { ok: true, value: path.address };
}

/** The user's own address, or an address that is delivered to the user's mailbox (an alias of theirs). */
async function ownsAddress(store: Store, user: Account, address: string): Promise<boolean> {
  let normal: string;
  try {
    normal = normalizeAddress(address);
  } catch {
    return false;
  }
  if (normal === user.address) return true;
  const resolution = await resolveRecipient(store.directory, normal);
  return resolution.kind === "local" && resolution.mailboxes.includes(user.mailbox);
}

export async function checkRecipient(ctx: PolicyContext, path: Path): Promise<Decision<Target>> {
  if (ctx.hooks.onRcptTo) return fromVerdict(await ctx.hooks.onRcptTo(path.address, ctx.info));
  // `<postmaster>` without a domain must always be accepted (RFC 5321 4.5.1): it means ours. So must
  // postmaster at our host name, which is in our greeting, Received headers and bounces even when it
  // is not a mail domain (Postfix: myhostname is in mydestination).
  if (path.domain === "" || (isPostmaster(path.local) && sameDomain(path.domain, ctx.hostname))) return postmaster(ctx);
  // One fetch for the domain check and the resolution below (a database store answers both at once).
  const lookups = await lookupsFor(ctx.store.directory, path.address);
  if (!(await isLocalDomain(lookups, path.domain))) {
    if (ctx.mode === "mx") return refuse(R.relayDenied());
    if (ctx.hooks.onRelay) return fromVerdict(await ctx.hooks.onRelay(path.address, ctx.info));
    return ctx.relay === "queue" && ctx.store.queue ? { ok: true, value: { mailboxes: [], relay: true } } : refuse(R.relayNotEnabled());
  }
  // The domain is ours. Anything that does not resolve to a mailbox (including `%`, `!`, and quoted
  // local parts spelling characters the store refuses in names) is an unknown user, never a relay.
  const resolution = await resolveRecipient(lookups, path.address);
  if (resolution.kind === "local") return { ok: true, value: { mailboxes: resolution.mailboxes, relay: false } };
  return refuse(R.unknownUser());
}

function sameDomain(a: string, b: string): boolean {
  if (a.toLowerCase() === b.toLowerCase()) return true;
  try {
    return normalizeDomain(a) === normalizeDomain(b);
  } catch {
    return false;
  }
}

/** Mailboxes are resolved per RCPT (one lookup); only which postmaster takes the mail is remembered. */
async function postmaster(ctx: PolicyContext): Promise<Decision<Target>> {
  const address = await ctx.postmaster.address();
  if (address !== null) {
    const resolution = await resolveRecipient(ctx.store.directory, address);
    // Qualified, as Postfix does: a queued transaction resolves its recipients again later, and
    // a bare `postmaster` would then look like a domain of its own.
    if (resolution.kind === "local") return { ok: true, value: { mailboxes: resolution.mailboxes, relay: false, address } };
    // Removed since it was found: look again on the next RCPT rather than refuse for the rest of the minute.
    ctx.postmaster.forget();
  }
  return refuse(R.unknownUser());
}

/**
 * Which address `<postmaster>` goes to: the postmaster of our host name, else of the first local domain
 * that has one. Finding it reads every domain, and anyone may send that RCPT to port 25, as often as
 * it likes; so the answer, "none" included, is kept for a while (a minute by default) for all sessions
 * of a server, and sessions asking at the same time share one search.
 */
export class PostmasterLookup {
  readonly #directory: Directory;
  readonly #hostname: string;
  readonly #ttlMs: number;
  readonly #now: () => number;
  #found: { readonly address: string | null; readonly until: number } | null = null;
  #searching: Promise<string | null> | null = null;

  constructor(directory: Directory, hostname: string, options: { readonly ttlMs?: number; readonly now?: () => number } = {}) {
    this.#directory = directory;
    this.#hostname = hostname;
    this.#ttlMs = options.ttlMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  /** The qualified postmaster address, or null when no local domain has one. */
  address(): Promise<string | null> {
    if (this.#found && this.#found.until > this.#now()) return Promise.resolve(this.#found.address);
    if (!this.#searching) {
      const search = this.#search().then(
        (address) => {
          this.#found = { address, until: this.#now() + this.#ttlMs };
          this.#searching = null;
          return address;
        },
        (error: unknown) => {
          // A failed lookup is not an answer: the next RCPT tries again.
          this.#searching = null;
          throw error;
        },
      );
      this.#searching = search;
    }
    return this.#searching;
  }

  forget(): void {
    this.#found = null;
  }

  async #search(): Promise<string | null> {
    const domains = [this.#hostname, ...(await this.#directory.listDomains())];
    for (const domain of domains) {
      const address = `postmaster@${domain}`;
      if ((await resolveRecipient(this.#directory, address)).kind === "local") return address;
    }
    return null;
  }
}

/**
 * Two RCPTs that name the same recipient get the same key. A relayed address keeps its local part as
 * sent (the remote end may treat its case as significant, RFC 5321 2.4) and has its domain normalised
 * (which never is); a local one is normalised as the store looks it up.
 */
export function recipientKey(address: string, relay: boolean): string {
  try {
    if (!relay) return normalizeAddress(address);
    const at = address.lastIndexOf("@");
    return at < 0 ? address : `${address.slice(0, at)}@${normalizeDomain(address.slice(at + 1))}`;
  } catch {
    // An address literal or a name the store refuses: only the same text is the same recipient.
    return address;
  }
}

function fromVerdict(verdict: RecipientVerdict): Decision<Target> {
  if (!("ok" in verdict)) return refuse(rejectReply("rcpt", verdict));
  return "relay" in verdict ? { ok: true, value: { mailboxes: [], relay: true } } : { ok: true, value: { mailboxes: verdict.mailboxes, relay: false } };
}
