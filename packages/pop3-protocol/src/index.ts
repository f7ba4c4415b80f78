export { createPop3Server, type Pop3ListenOptions, type Pop3Server } from "./server.js";
export type { Pop3ServerOptions } from "./options.js";
export { runExpire, type ExpireOptions, type ExpireResult } from "./expire.js";
export type { ResponseCode } from "./replies.js";
