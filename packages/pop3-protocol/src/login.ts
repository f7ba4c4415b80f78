import type { Account, Lease, Logger, Mailbox, MessageInfo } from "@mailroom/store";
import type { SessionContext } from "./context.js";
import { err, storeErrorReply } from "./replies.js";

export type OpenResult =
  | { readonly kind: "open"; readonly mailbox: Mailbox; readonly lease: Lease; readonly messages: readonly MessageInfo[] }
  /** Send this -ERR and stay in AUTHORIZATION. */
  | { readonly kind: "refused"; readonly reply: string }
  /** The connection went away meanwhile; nothing is held. */
  | { readonly kind: "gone" };

/**
 * The second half of a login, after the password was accepted: LOGIN-DELAY, the mailbox lease, and the
 * snapshot listing that fixes the message numbers for the whole session. On any failure nothing stays
 * held; `gone` is asked after each wait so a vanished client does not leave a lease behind.
 */
export async function openMaildrop(
  ctx: SessionContext,
  account: Account,
  holder: string,
  gone: () => boolean,
  log: Logger,
): Promise<OpenResult> {
  if (ctx.loginDelaySeconds > 0) {
    const last = ctx.lastLogin.get(account.address);
    if (last !== undefined && Date.now() - last < ctx.loginDelaySeconds * 1000) {
      log.info({ user: account.address }, "login too soon (LOGIN-DELAY)");
      return { kind: "refused", reply: err(`at most one login every ${ctx.loginDelaySeconds} seconds`, "LOGIN-DELAY") };
    }
  }

  let mailbox: Mailbox;
  let lease: Lease;
  try {
    mailbox = ctx.store.mailbox(account.mailbox);
    lease = await mailbox.acquireLease({ holder, ttlMs: ctx.leaseTtlMs });
  } catch (error) {
    log.warn({ err: error, user: account.address }, "cannot lock mailbox");
    return { kind: "refused", reply: storeErrorReply(error, "cannot open the mailbox") };
  }
  try {
    if (gone()) throw new Error("connection ended during login");
    const messages = await mailbox.list();
    if (gone()) throw new Error("connection ended during login");
    if (ctx.loginDelaySeconds > 0) rememberLogin(ctx, account.address);
    return { kind: "open", mailbox, lease, messages };
  } catch (error) {
    await lease.release().catch(() => {});
    if (gone()) return { kind: "gone" };
    log.error({ err: error, user: account.address }, "cannot list mailbox");
    return { kind: "refused", reply: storeErrorReply(error, "cannot open the mailbox") };
  }
}

/** Records a login for LOGIN-DELAY; entries older than the delay are useless and get dropped in bulk. */
function rememberLogin(ctx: SessionContext, address: string): void {
  const now = Date.now();
  if (ctx.lastLogin.size >= 10_000) {
    for (const [key, at] of ctx.lastLogin) if (now - at >= ctx.loginDelaySeconds * 1000) ctx.lastLogin.delete(key);
  }
  ctx.lastLogin.delete(address);
  ctx.lastLogin.set(address, now);
}
