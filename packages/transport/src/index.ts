export { Connection, type ConnectionEvents, type TlsInfo } from "./connection.js";
export { HeldWrites } from "./held-writes.js";
export { listen, type Listener, type ListenOptions, type RejectReason } from "./listener.js";
export { TlsContext, type TlsMaterial } from "./tls-context.js";
export { runtimeName, type RuntimeName } from "./runtime.js";
