import type { Account, Logger, LoginCache, LoginThrottle, MailboxId, Store } from "@mailroom/store";
import type { Listener, TlsContext, TlsInfo } from "@mailroom/transport";

export type ListenerMode = "mx" | "submission";

/** What hooks learn about the session that calls them. */
export interface SessionInfo {
  readonly id: string;
  readonly mode: ListenerMode;
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  readonly secure: boolean;
  readonly tls: TlsInfo | null;
  /** The HELO/EHLO name, or null before it. */
  readonly helo: string | null;
  /** The authenticated account (submission), or null. */
  readonly user: Account | null;
}

/** A refusal. The protocol picks the reply code: "permanent" → 5xx, "temporary" → 4xx. */
export interface Reject {
  readonly reject: "permanent" | "temporary";
  /** One line for the client; no CR/LF (they are replaced). Default: a generic text. */
  readonly message?: string;
}

export type Verdict = { readonly ok: true } | Reject;
/**
 * Where one recipient's copy goes: local mailboxes, or (`relay: true`) the store's outbound queue, from
 * which a delivery worker sends it on.
 */
export type RecipientVerdict =
  | { readonly ok: true; readonly mailboxes: readonly MailboxId[] }
  | { readonly ok: true; readonly relay: true }
  | Reject;

export interface Recipient {
  /**
   * The address as the client sent it; `<postmaster>` (bare or at our host name) as the postmaster
   * address that takes it. Each recipient once: a repeated RCPT is not added again.
   */
  readonly address: string;
  /** Local mailboxes that get a copy; empty for a relayed recipient. */
  readonly mailboxes: readonly MailboxId[];
  /** Sent on through the outbound queue. */
  readonly relay: boolean;
}

export interface Envelope {
  /** The id the 250 reply and the Received header name. */
  readonly id: string;
  /** The reverse path; "" for the null sender `<>` (bounces). */
  readonly mailFrom: string;
  readonly recipients: readonly Recipient[];
  /** The client asked for SMTPUTF8. */
  readonly utf8: boolean;
}

/**
 * Typed, async policy hooks. Each returns a verdict; the mapping to reply codes is the server's. A hook
 * that throws is answered with a temporary failure (details only in the log).
 */
export interface SmtpHooks {
  /** Before the greeting. A refusal gets 554 5.7.1 (permanent) or 421 4.7.0 (temporary) and a close. */
  onConnect?(info: SessionInfo): Promise<Verdict> | Verdict;
  /** Replaces the store's password check for AUTH. */
  onAuth?(login: string, password: string, info: SessionInfo): Promise<Account | null> | Account | null;
  /** An extra check after the built-in sender rules (which it cannot loosen). */
  onMailFrom?(address: string, info: SessionInfo): Promise<Verdict> | Verdict;
  /** Replaces the built-in recipient lookup and policy (local domains, relay refusal) entirely. */
  onRcptTo?(address: string, info: SessionInfo): Promise<RecipientVerdict> | RecipientVerdict;
  /**
   * Submission only: a recipient outside the local domains. Default: queued for relaying when the server
   * was created with `relay: "queue"` (and the store has a queue), else refused with 550 5.7.1.
   */
  onRelay?(address: string, info: SessionInfo): Promise<RecipientVerdict> | RecipientVerdict;
  /**
   * Replaces store delivery. `message` yields exactly the octets a store would get (Return-Path and
   * Received first). Consume it to the end before resolving with ok. The 250 is sent after it resolves.
   * `signal` aborts when the client disconnects or the message is refused.
   */
  onData?(envelope: Envelope, message: AsyncIterable<Uint8Array>, info: SessionInfo & { readonly signal: AbortSignal }):
    | Promise<Verdict>
    | Verdict;
}

/** Milliseconds. */
export interface SmtpTimeouts {
  /**
   * Waiting for a command (and for the first one after the greeting), and for the rest of a command
   * line once its first octet has arrived. Default 5 minutes.
   */
  readonly command: number;
  /**
   * Waiting for the next bytes inside DATA or a BDAT chunk, and for the rest of a DATA line once it
   * has begun. Default 3 minutes.
   */
  readonly dataBlock: number;
  /** The store's delivery after the end of data, before the client gives up. Default 10 minutes. */
  readonly dataEnd: number;
  /**
   * The longest a connection may last; a message whose 250 is being decided finishes first. 0 turns
   * the limit off. Default 30 minutes: a sending MTA reuses a connection for minutes, not hours
   * (Postfix's client for at most 300 s).
   */
  readonly session: number;
}

export interface SmtpLimits {
  /** Largest message, also advertised as SIZE. Default 25 MiB. */
  readonly maxMessageBytes: number;
  /** Recipients per transaction (every RCPT answered 250, a repeated one too). Default 100. */
  readonly maxRecipients: number;
  /**
   * Command line length including CRLF. Default 512. A MAIL line may be 652 octets longer, the room
   * its extension parameters are given by their RFCs (AUTH=, SIZE=, BODY=, SMTPUTF8, RET=/ENVID=).
   */
  readonly maxCommandLine: number;
  /** Message line length including CRLF. Default 1000. */
  readonly maxTextLine: number;
  /** Unrecognised commands before 421 and close. Default 10. */
  readonly maxUnknownCommands: number;
  /** Error replies (4xx/5xx) since the last delivered message (or the start) before 421 and close. Default 20. */
  readonly maxErrors: number;
  /** Mail transactions (MAIL commands) per connection. Default 10,000: MTAs reuse one connection for a whole queue run. */
  readonly maxTransactionsPerConnection: number;
  /** Open connections per listener. Default 1000. */
  readonly maxConnections: number;
  /** Open connections from one address per listener. Default 20. */
  readonly maxConnectionsPerAddress: number;
  readonly timeouts: SmtpTimeouts;
}

export type SmtpLimitsOptions = Partial<Omit<SmtpLimits, "timeouts">> & { readonly timeouts?: Partial<SmtpTimeouts> };

export const DEFAULT_LIMITS: SmtpLimits = {
  maxMessageBytes: 25 * 1024 * 1024,
  maxRecipients: 100,
  maxCommandLine: 512,
  maxTextLine: 1000,
  maxUnknownCommands: 10,
  maxErrors: 20,
  maxTransactionsPerConnection: 10_000,
  maxConnections: 1000,
  maxConnectionsPerAddress: 20,
  timeouts: { command: 5 * 60_000, dataBlock: 3 * 60_000, dataEnd: 10 * 60_000, session: 30 * 60_000 },
};

export function resolveLimits(options: SmtpLimitsOptions | undefined): SmtpLimits {
  return { ...DEFAULT_LIMITS, ...options, timeouts: { ...DEFAULT_LIMITS.timeouts, ...options?.timeouts } };
}

export interface SmtpServerOptions {
  readonly store: Store;
  /** Our name in the greeting, EHLO and Received headers. */
  readonly hostname: string;
  /** STARTTLS on plain listeners; required for implicit-TLS listeners. */
  readonly tls?: TlsContext;
  /** One line per session event, with the session id. Never passwords or message bodies. */
  readonly logger?: Logger;
  /** Shared with POP3 by the app, so that guessing is slowed across both. */
  readonly loginThrottle?: LoginThrottle;
  /** Passwords that passed recently, checked without scrypt. Shared with POP3 by the app. Default: `createLoginCache()`. */
  readonly loginCache?: LoginCache;
  /** Offer and accept AUTH without TLS from loopback clients. Default false. */
  readonly allowLoopbackPlaintextAuth?: boolean;
  /** Bare CR or LF in a message: refuse it (default) or turn it into CRLF. */
  readonly bareLineEndings?: "reject" | "normalize";
  readonly limits?: SmtpLimitsOptions;
  readonly hooks?: SmtpHooks;
  /**
   * Submission to other domains: "queue" puts such messages in `store.queue` for the outbound worker;
   * "refuse" (the default) answers 550 5.7.1. Inbound (mx) listeners never relay, whatever this says.
   */
  readonly relay?: "queue" | "refuse";
}

export interface SmtpListenOptions {
  readonly host: string;
  readonly port: number;
  readonly mode: ListenerMode;
  readonly implicitTls?: boolean;
}

export interface SmtpServer {
  listen(options: SmtpListenOptions): Promise<Listener>;
  /**
   * Stops accepting. Idle sessions get "421 4.3.2 <host> shutting down"; a transaction in DATA may
   * finish until the deadline (default 30 s), after which every remaining connection is dropped.
   */
  close(options?: { readonly deadlineMs?: number }): Promise<void>;
  /** Sessions open now, over all listeners. */
  readonly sessionCount: number;
}
