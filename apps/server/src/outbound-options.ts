import type { OutboundOptions } from "@mailroom/outbound";
import type { Logger, Store } from "@mailroom/store";
import { readSmarthostPassword, type ServerConfig } from "./config.js";

/** The worker's options from `[outbound]`; the smarthost password is read from its file here. */
export function outboundOptions(config: ServerConfig, store: Store, logger: Logger): OutboundOptions {
  const o = config.outbound;
  const password = readSmarthostPassword(config);
  const smarthost = o.smarthost;
  return {
    store,
    hostname: config.hostname,
    logger,
    concurrency: o.concurrency,
    perDomainConcurrency: o.perDomainConcurrency,
    mxAddressLimit: o.mxAddressLimit,
    mxPort: o.mxPort,
    ...(o.resolver.length > 0 ? { resolver: { servers: o.resolver } } : {}),
    ...(o.retrySchedule ? { retrySchedule: o.retrySchedule } : {}),
    ...(o.queueLifetimeHours !== null ? { queueLifetimeMs: o.queueLifetimeHours * 3_600_000 } : {}),
    ...(smarthost
      ? {
          smarthost: {
            host: smarthost.host,
            port: smarthost.port,
            tls: smarthost.tls,
            verify: smarthost.verify,
            ...(smarthost.auth && password !== null ? { auth: { username: smarthost.auth.username, password } } : {}),
          },
        }
      : {}),
  };
}
