import type { Logger, Store } from "@mailroom/store";
import type { ServerConfig } from "./config.js";

/** In the development setup a fresh store gets the domain `localhost`, so `user add you@localhost` just works. */
export async function ensureDevelopmentDomain(store: Store, config: ServerConfig, logger?: Logger): Promise<void> {
  if (!config.development) return;
  if ((await store.directory.listDomains()).length > 0) return;
  await store.directory.addDomain("localhost");
  logger?.info({ domain: "localhost" }, "development setup: added the domain localhost");
}
