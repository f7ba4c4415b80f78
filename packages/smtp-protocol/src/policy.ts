import {
  lookupsFor,
  normalizeAddress,
  normalizeDomain,
  resolveRecipient,
  type Account,
  type MailboxId,
  type RecipientLookups,
  type Store,
} from "@mailroom/store";
import type { Path } from "./commands.js";
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
  // `<postmaster>` without a domain must always be accepted (RFC 5321 4.5.1): it means ours.
  if (path.domain === "") return postmaster(ctx);
  // One fetch for the domain check and the resolution below (a database store answers both at once).
  const lookups = await lookupsFor(ctx.store.directory, path.address);
  if (!(await isLocalDomain(lookups, path.domain))) {
    if (ctx.mode === "mx") return refuse(R.relayDenied());
    if (ctx.hooks.onRelay) return fromVerdict(await ctx.hooks.onRelay(path.address, ctx.info));
    return ctx.relay === "queue" && ctx.store.queue ? { ok: true, value: { mailboxes: [], relay: true } } : refuse(R.relayNotEnabled());
  }
  // The domain is ours. Anything that does not resolve to a mailbox (including `%`, `!` and quoted
  // local parts, which the store refuses as names) is an unknown user, never a relay.
  const resolution = await resolveRecipient(lookups, path.address);
  if (resolution.kind === "local") return { ok: true, value: { mailboxes: resolution.mailboxes, relay: false } };
  return refuse(R.unknownUser());
}

/** The postmaster of our host name, else of the first local domain that has one. */
async function postmaster(ctx: PolicyContext): Promise<Decision<Target>> {
  const domains = [ctx.hostname, ...(await ctx.store.directory.listDomains())];
  for (const domain of domains) {
    const address = `postmaster@${domain}`;
    const resolution = await resolveRecipient(ctx.store.directory, address);
    // Qualified, as Postfix does: a queued transaction resolves its recipients again later, and
    // a bare `postmaster` would then look like a domain of its own.
    if (resolution.kind === "local") return { ok: true, value: { mailboxes: resolution.mailboxes, relay: false, address } };
  }
  return refuse(R.unknownUser());
}

function fromVerdict(verdict: RecipientVerdict): Decision<Target> {
  if (!("ok" in verdict)) return refuse(rejectReply("rcpt", verdict));
  return "relay" in verdict ? { ok: true, value: { mailboxes: [], relay: true } } : { ok: true, value: { mailboxes: verdict.mailboxes, relay: false } };
}
