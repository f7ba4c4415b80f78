export { loadConfig, parseListen, formatAddress, DEVELOPMENT_DEFAULTS, type ServerConfig, type ListenAddress, type LoadOptions, type LogLevel, type OutboundSmarthost } from "./config.js";
export { ConfigError, isConfigError } from "./errors.js";
export { createRegistry, openStore, checkStoreOptions, isStoreAdapter, type AdapterRegistry, type RegistryOptions } from "./registry.js";
export { startServer, runtimeLimitations, type RunningServer, type ListenerInfo } from "./serve.js";
export { ensureDevelopmentDomain } from "./development.js";
export { createLogger, type AppLogger } from "./logger.js";
export { main } from "./cli/main.js";
export { createMetrics, startMetricsServer, type ServerMetrics, type HttpEndpoint } from "./metrics.js";
export { timedStore } from "./store-timing.js";
