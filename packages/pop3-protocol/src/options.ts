import type { Logger, LoginCache, LoginThrottle, Store } from "@mailroom/store";
import type { TlsContext } from "@mailroom/transport";

export interface Pop3ServerOptions {
  readonly store: Store;
  /** Shown in the greeting and the QUIT reply, and used in lease holder names. */
  readonly hostname: string;
  /** Enables STLS on plain listeners; required for `implicitTls` listeners (POP3S, port 995). */
  readonly tls?: TlsContext;
  /** pino-compatible. One line per session event, each with the session id; passwords are never logged. */
  readonly logger?: Logger;
  /** Shared with SMTP AUTH by the app. Default: `createLoginThrottle()`. */
  readonly loginThrottle?: LoginThrottle;
  /** Passwords that passed recently, checked without scrypt. Shared with SMTP AUTH by the app. Default: `createLoginCache()`. */
  readonly loginCache?: LoginCache;
  /**
   * Allow USER/PASS and AUTH PLAIN/LOGIN on unencrypted non-loopback connections. Default false:
   * they are refused with a hint to use STLS, and not advertised in CAPA.
   */
  readonly allowPlaintextAuth?: boolean;
  /** The retention policy advertised as EXPIRE (days); null or absent → "EXPIRE NEVER". Enforced by `runExpire`. */
  readonly expireDays?: number | null;
  /** Minimum seconds between two logins of one account; advertised as LOGIN-DELAY and enforced when > 0. */
  readonly loginDelaySeconds?: number;
  /**
   * A session without traffic for this long is ended, and so is one whose client takes this long to
   * finish a command line it has begun. Default 600 000 (RFC 1939's 10-minute minimum).
   */
  readonly idleTimeoutMs?: number;
  /**
   * A connection that has not logged in this long after it was opened is ended, however busy it keeps
   * itself; 0 turns the limit off. Default 180 000 (Dovecot's three minutes). Bounds how long an
   * unauthenticated client can hold one of the listener's connection slots.
   */
  readonly loginTimeoutMs?: number;
  /** Mailbox lease lifetime; renewed every ttl/3 while the session lives. Default 60 000. */
  readonly leaseTtlMs?: number;
  /** Connections open at once, per listener. */
  readonly maxConnections?: number;
  /** Connections open at once from one client address, per listener. */
  readonly maxConnectionsPerAddress?: number;
  /** Unknown, malformed or out-of-state commands allowed before the session is ended. Default 10. */
  readonly maxBadCommands?: number;
  /**
   * @internal Test hook, not part of the supported API: decides which client addresses count as
   * local for the plaintext rule. Default: 127.0.0.0/8 and ::1.
   */
  readonly isLocalAddress?: (remoteAddress: string) => boolean;
}
