import type { Logger, LoginCache, LoginThrottle, Store } from "@mailroom/store";
import type { TlsContext } from "@mailroom/transport";

/** Everything a session needs from its server; one object shared by all sessions. */
export interface SessionContext {
  readonly store: Store;
  readonly hostname: string;
  readonly tls: TlsContext | undefined;
  readonly logger: Logger;
  readonly throttle: LoginThrottle;
  readonly loginCache: LoginCache;
  readonly allowPlaintextAuth: boolean;
  readonly expireDays: number | null;
  readonly loginDelaySeconds: number;
  readonly idleTimeoutMs: number;
  readonly loginTimeoutMs: number;
  readonly leaseTtlMs: number;
  readonly maxBadCommands: number;
  readonly isLocalAddress: (address: string) => boolean;
  /** Last successful login per account, for LOGIN-DELAY. */
  readonly lastLogin: Map<string, number>;
}
