import { hasStoreErrorCode, type Account, type Logger } from "@mailroom/store";
import { HeldWrites, type Connection } from "@mailroom/transport";
import { beginSasl, checkLogin, SASL_MECHANISMS, type SaslStep } from "./auth.js";
import { capabilityLines } from "./capabilities.js";
import type { SessionContext } from "./context.js";
import { openMaildrop, type OpenResult } from "./login.js";
import { ALLOWED, type Command } from "./commands.js";
import { MAX_COMMAND_OCTETS, parseCommand, takeLine } from "./parser.js";
import { err, multiline, ok, storeErrorReply } from "./replies.js";
import { handleTransaction, maildropSummary, MidReplyError, type ReplyChannel, type TransactionState } from "./transaction.js";
import { commitUpdate } from "./update.js";

interface AuthorizationState {
  readonly name: "authorization";
  /** Name given by USER, waiting for PASS. */
  readonly user: string | null;
  /** An AUTH exchange waiting for the client's next line. */
  readonly sasl: SaslStep & { kind: "challenge" } | null;
}

/**
 * AUTHORIZATION → TRANSACTION → UPDATE (QUIT) → closed. Only TRANSACTION carries the mailbox and lease.
 * "releasing" is the way out of TRANSACTION without QUIT (drop, timeout, shutdown): nothing is deleted.
 */
type State =
  | AuthorizationState
  | TransactionState
  | { readonly name: "update" }
  | { readonly name: "releasing" }
  | { readonly name: "closed" };

/** How a login ended: the mailbox open (and leased) for `account`, a refusal to send, or the client gone. */
type LoginAttempt =
  | Exclude<OpenResult, { kind: "open" }>
  | (Extract<OpenResult, { kind: "open" }> & { readonly account: Account });

const EMPTY = new Uint8Array(0);
/** SASL responses are not commands; RFC 5034 lets them be longer than 255 octets. */
const MAX_SASL_OCTETS = 8192;
/** Pipelined input kept while a command runs; beyond it, reading pauses until the backlog shrinks. */
const MAX_BUFFERED_INPUT = 64 * 1024;
const SHUTTING_DOWN = err("server shutting down", "SYS/TEMP");
const LOGIN_TOO_SLOW = err("no login within the time limit, closing connection");
const LF = 0x0a;

export class Session {
  readonly #conn: Connection;
  readonly #ctx: SessionContext;
  readonly #log: Logger;
  #state: State = { name: "authorization", user: null, sasl: null };
  #input: Uint8Array = EMPTY;
  #busy = false;
  #paused = false;
  #ending = false;
  #connClosed = false;
  #shuttingDown = false;
  #streaming = false;
  #badCommands = 0;
  /** Ends a connection that has not logged in within the login timeout. */
  #loginTimer: ReturnType<typeof setTimeout> | undefined;
  #loginExpired = false;
  /** Credentials (and then the mailbox) are being checked: the only wait the login timeout lets finish. */
  #checkingLogin = false;
  /** The client shut down its sending side (see #onInputEnd). */
  #inputEnded = false;
  /** Replies (a small RETR's message included) held while #pump works through pipelined commands. */
  readonly #replies: HeldWrites;
  #resolveClosed!: () => void;
  /** Resolves once the connection is gone and no lease is held any more. */
  readonly closed = new Promise<void>((resolve) => (this.#resolveClosed = resolve));

  constructor(connection: Connection, context: SessionContext) {
    this.#conn = connection;
    this.#replies = new HeldWrites(connection);
    this.#ctx = context;
    this.#log = context.logger.child({
      session: connection.id,
      remote: `${connection.remoteAddress}:${connection.remotePort}`,
    });
  }

  start(): void {
    this.#log.info({ tls: this.#conn.secure }, "connected");
    this.#conn.setIdleTimeout(this.#ctx.idleTimeoutMs);
    this.#conn.setLineTimeout(this.#ctx.idleTimeoutMs);
    if (this.#ctx.loginTimeoutMs > 0) {
      this.#loginTimer = setTimeout(() => this.#onLoginTimeout(), this.#ctx.loginTimeoutMs);
      this.#loginTimer.unref?.();
    }
    this.#conn.start({
      data: (chunk) => this.#onData(chunk),
      inputEnd: () => this.#onInputEnd(),
      close: () => this.#onClose(),
      timeout: (reason) => this.#onTimeout(reason),
    });
    // No APOP timestamp: there is no shared secret to check it against.
    this.#conn.write(ok(`${this.#ctx.hostname} Mailroom POP3 server ready`));
  }

  /** Server shutdown begins: a session that has not logged in is ended now; a logged-in one may finish. */
  shutdown(): void {
    this.#shuttingDown = true;
    // A pump waiting for a client that does not read is no reason to wait; a login being checked is.
    if (this.#state.name === "authorization" && !this.#checkingLogin) this.#endBeforeLogin(SHUTTING_DOWN);
  }

  /** The shutdown deadline passed: end without deleting anything. A QUIT already in UPDATE completes. */
  forceClose(): void {
    if (this.#state.name === "update" || this.#connClosed) return;
    this.#log.info({ state: this.#state.name }, "dropped at shutdown deadline");
    this.#leaveTransaction();
    // Inside a multi-line reply an -ERR would read as message text; an ended session just goes.
    if (this.#streaming || this.#ending) {
      this.#ending = true;
      this.#conn.destroy();
      return;
    }
    this.#ending = true;
    this.#replies.flush();
    this.#conn.end(SHUTTING_DOWN);
    // Past the deadline a client that does not read its goodbye gets only a moment more.
    setTimeout(() => this.#conn.destroy(), 1000).unref?.();
  }

  #onData(chunk: Uint8Array): void {
    if (this.#ending) return;
    const joined = new Uint8Array(this.#input.length + chunk.length);
    joined.set(this.#input);
    joined.set(chunk, this.#input.length);
    this.#input = joined;
    if (this.#input.length > MAX_BUFFERED_INPUT && !this.#paused) {
      this.#paused = true;
      this.#conn.pause();
    }
    void this.#pump();
  }

  /**
   * The client shut down its sending side. What it sent is answered first (a pipelined QUIT still
   * deletes what it marked); then the connection ends, and without a QUIT nothing is deleted.
   */
  #onInputEnd(): void {
    this.#inputEnded = true;
    void this.#pump();
  }

  #onTimeout(reason: "idle" | "line"): void {
    this.#log.info({ state: this.#state.name }, reason === "idle" ? "idle timeout" : "command line not finished in time");
    // Mid-reply an -ERR would be read as message text; just drop.
    if (this.#streaming) {
      this.#ending = true;
      this.#conn.destroy();
    } else {
      // One answer for both: a line that trickles in is idling too, and which timer fires first when
      // both are due is chance.
      this.#endWith(err("idle timeout, closing connection", "SYS/TEMP"));
    }
  }

  #onLoginTimeout(): void {
    if (this.#state.name !== "authorization") return;
    this.#log.info({}, "login timeout");
    this.#loginExpired = true;
    // A login being checked right now may still succeed; #login decides once it is done.
    if (this.#checkingLogin) return;
    // Anything else the session may be waiting for is up to the client (above all, that it reads its
    // replies), and the client must not be able to buy time with it.
    this.#endBeforeLogin(LOGIN_TOO_SLOW);
  }

  /** Ends a session in AUTHORIZATION, also while #pump waits (for a client that does not read). */
  #endBeforeLogin(reply: string): void {
    const waiting = this.#busy;
    this.#endWith(reply);
    // A client that is not reading its replies will not read this one either: it gets only a moment more.
    if (waiting) setTimeout(() => this.#conn.destroy(), 1000).unref?.();
  }

  #onClose(): void {
    clearTimeout(this.#loginTimer);
    this.#connClosed = true;
    this.#ending = true;
    this.#log.info({ state: this.#state.name }, "disconnected");
    this.#leaveTransaction();
    this.#maybeFinish();
  }

  /** Leaves TRANSACTION without UPDATE: nothing is deleted, the lease is given back. */
  #leaveTransaction(): void {
    const state = this.#state;
    if (state.name !== "transaction") return;
    this.#state = { name: "releasing" };
    clearInterval(state.renewTimer);
    void state.lease
      .release()
      .catch((error: unknown) => this.#log.warn({ err: error }, "lease release failed"))
      .finally(() => {
        this.#state = { name: "closed" };
        this.#maybeFinish();
      });
  }

  #maybeFinish(): void {
    const name = this.#state.name;
    if (this.#connClosed && name !== "transaction" && name !== "update" && name !== "releasing") this.#resolveClosed();
  }

  #endWith(text: string): void {
    if (this.#ending) return;
    this.#ending = true;
    this.#replies.flush();
    this.#conn.end(text);
  }

  async #send(text: string): Promise<void> {
    if (!this.#replies.write([text])) await this.#conn.drained();
  }

  /** Built on first use: field initialisers run before the constructor has set up the logger. */
  #channelCache: ReplyChannel | undefined;
  get #channel(): ReplyChannel {
    return (this.#channelCache ??= {
      send: (text) => this.#send(text),
      write: async (parts) => {
        if (this.#conn.closed) return false;
        // Waiting here is what keeps a slow reader from making us hold the message.
        if (!this.#replies.write(parts)) await this.#conn.drained();
        return !this.#conn.closed;
      },
      log: this.#log,
    });
  }

  async #pump(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    this.#replies.hold();
    try {
      while (!this.#ending) {
        // Asked before every command, not only after one: no command (least of all a PASS) may run
        // once the time to log in is up or the server is going down.
        if (this.#state.name === "authorization") {
          if (this.#loginExpired) {
            this.#endWith(LOGIN_TOO_SLOW);
            break;
          }
          if (this.#shuttingDown && this.#state.sasl === null) {
            this.#endWith(SHUTTING_DOWN);
            break;
          }
        }
        const sasl = this.#state.name === "authorization" && this.#state.sasl !== null;
        const line = takeLine(this.#input, sasl ? MAX_SASL_OCTETS : MAX_COMMAND_OCTETS);
        if (line.kind === "needs-more") break;
        if (line.kind === "too-long") {
          this.#log.info({}, "line too long");
          this.#endWith(err("line too long, closing connection"));
          break;
        }
        this.#input = this.#input.subarray(line.consumed);
        await this.#handleLine(line.text);
        // No complete command left to answer: what was held goes out now. (Never wait for the client
        // with replies held: it may be waiting for them.)
        if (this.#input.indexOf(LF) === -1 && !this.#replies.flush()) await this.#conn.drained();
      }
    } catch (error) {
      if (!(error instanceof MidReplyError)) this.#log.error({ err: error }, "session failed");
      this.#ending = true;
      // A reply cut short still goes out as far as it got, so the client sees where it broke.
      this.#replies.flush();
      this.#conn.destroy();
    } finally {
      if (this.#ending) this.#replies.discard();
      this.#replies.release();
      this.#busy = false;
      if (this.#paused && this.#input.length <= MAX_BUFFERED_INPUT) {
        this.#paused = false;
        this.#conn.resume();
      }
    }
    if (this.#inputEnded && !this.#ending) {
      this.#log.info({ state: this.#state.name }, "client ended its input");
      this.#endWith("");
    }
  }

  async #bad(reply: string): Promise<void> {
    if (++this.#badCommands >= this.#ctx.maxBadCommands) {
      this.#log.info({ bad: this.#badCommands }, "too many bad commands");
      this.#endWith(err("too many bad commands, closing connection"));
      return;
    }
    await this.#send(reply);
  }

  async #handleLine(text: string): Promise<void> {
    const state = this.#state;
    if (state.name === "authorization" && state.sasl) return this.#continueSasl(state.sasl, text);
    const parsed = parseCommand(text);
    if (parsed.kind === "error") return this.#bad(err(parsed.message));
    const command = parsed.command;
    this.#log.debug({ command: command.name }, "command");
    if (state.name !== "authorization" && state.name !== "transaction") return;
    if (!ALLOWED[state.name].has(command.name)) {
      return this.#bad(err(`${command.name} is not allowed ${state.name === "authorization" ? "before" : "after"} login`));
    }
    if (state.name === "transaction") return this.#transactionCommand(state, command);
    return this.#authorizationCommand(state, command);
  }

  async #transactionCommand(tx: TransactionState, command: Command): Promise<void> {
    switch (command.name) {
      case "CAPA":
        return this.#send(multiline(ok("capability list follows"), capabilityLines(this.#capabilityInput(false))));
      case "QUIT":
        return this.#update(tx);
      case "STAT":
      case "LIST":
      case "UIDL":
      case "RETR":
      case "TOP":
      case "DELE":
      case "NOOP":
      case "RSET":
        this.#streaming = command.name === "RETR" || command.name === "TOP";
        try {
          return await handleTransaction(tx, command, this.#channel);
        } finally {
          this.#streaming = false;
        }
      default:
        return this.#bad(err(`${command.name} is not allowed after login`));
    }
  }

  #plaintextAllowed(): boolean {
    return this.#ctx.allowPlaintextAuth || this.#conn.secure || this.#ctx.isLocalAddress(this.#conn.remoteAddress);
  }

  #capabilityInput(authorization: boolean) {
    return {
      stls: authorization && this.#ctx.tls !== undefined && !this.#conn.secure,
      plaintextAuth: this.#plaintextAllowed(),
      expireDays: this.#ctx.expireDays,
      loginDelaySeconds: this.#ctx.loginDelaySeconds,
    };
  }

  async #authorizationCommand(state: AuthorizationState, command: Command): Promise<void> {
    const noPlaintext = err("plaintext authentication requires STLS first", "AUTH");
    switch (command.name) {
      case "CAPA":
        return this.#send(multiline(ok("capability list follows"), capabilityLines(this.#capabilityInput(true))));
      case "QUIT":
        this.#log.info({}, "quit before login");
        return this.#endWith(ok(`${this.#ctx.hostname} Mailroom POP3 server signing off`));
      case "APOP":
        return this.#send(err("APOP is not supported (no shared secrets are stored); use USER/PASS or AUTH over TLS"));
      case "STLS":
        return this.#startTls();
      case "USER":
        if (!this.#plaintextAllowed()) return this.#send(noPlaintext);
        this.#state = { name: "authorization", user: command.user, sasl: null };
        // The same answer for every name: it must not tell whether the account exists.
        return this.#send(ok("send PASS"));
      case "PASS": {
        if (!this.#plaintextAllowed()) return this.#send(noPlaintext);
        if (state.user === null) return this.#bad(err("USER first"));
        this.#state = { name: "authorization", user: null, sasl: null };
        return this.#login(state.user, command.password);
      }
      case "AUTH": {
        if (command.mechanism === null) {
          // Pre-RFC 5034 clients probe with a bare AUTH to learn the mechanisms.
          return this.#send(multiline(ok("methods supported"), this.#plaintextAllowed() ? [...SASL_MECHANISMS] : []));
        }
        if (!this.#plaintextAllowed()) return this.#send(noPlaintext);
        const step = beginSasl(command.mechanism, command.initialResponse);
        if (!step) return this.#send(err("unsupported authentication mechanism"));
        return this.#saslStep(step);
      }
      default:
        return this.#bad(err(`${command.name} is not allowed before login`));
    }
  }

  async #continueSasl(pending: SaslStep & { kind: "challenge" }, line: string): Promise<void> {
    this.#state = { name: "authorization", user: null, sasl: null };
    if (line === "*") return this.#send(err("authentication cancelled"));
    return this.#saslStep(pending.next(line));
  }

  async #saslStep(step: SaslStep): Promise<void> {
    switch (step.kind) {
      case "challenge":
        this.#state = { name: "authorization", user: null, sasl: step };
        return this.#send(`+ ${step.challenge}\r\n`);
      case "invalid":
        return this.#send(err(step.message));
      case "credentials":
        return this.#login(step.login, step.password);
    }
  }

  async #startTls(): Promise<void> {
    const tls = this.#ctx.tls;
    if (!tls) return this.#send(err("STLS is not available"));
    if (this.#conn.secure) return this.#send(err("already using TLS"));
    // No await between the go-ahead and the upgrade: while we waited for a drain, the client's
    // ClientHello could arrive and be taken (and dropped) as plaintext input. upgradeToTls itself
    // flushes the reply before it hands the socket to TLS.
    this.#replies.flush();
    this.#conn.write(ok("begin TLS negotiation"));
    // Whatever the client pipelined after STLS came in the clear and could be injected: drop it.
    this.#input = EMPTY;
    this.#state = { name: "authorization", user: null, sasl: null };
    try {
      await this.#conn.upgradeToTls(tls);
    } catch (error) {
      this.#log.info({ err: error }, "TLS handshake failed");
      this.#ending = true;
      return;
    }
    // The idle timer lives on the socket object, which the upgrade replaced.
    this.#conn.setIdleTimeout(this.#ctx.idleTimeoutMs);
    this.#log.info({ tls: this.#conn.tls }, "TLS started");
  }

  async #login(login: string, password: string): Promise<void> {
    const ctx = this.#ctx;
    this.#checkingLogin = true;
    let opened: LoginAttempt;
    try {
      opened = await this.#checkAndOpen(login, password);
    } finally {
      this.#checkingLogin = false;
    }
    if (opened.kind === "gone") return;
    if (opened.kind === "refused") {
      // The login timeout or shutdown waited for this check; since it failed, the session ends now
      // rather than wait for a client that may not even read the refusal.
      if (this.#loginExpired) return this.#endWith(LOGIN_TOO_SLOW);
      if (this.#shuttingDown) return this.#endWith(SHUTTING_DOWN);
      return this.#send(opened.reply);
    }
    const { account, mailbox, lease, messages } = opened;
    const renewTimer = setInterval(() => this.#renew(), Math.max(1, Math.floor(ctx.leaseTtlMs / 3)));
    renewTimer.unref?.();
    const tx: TransactionState = {
      name: "transaction",
      account,
      mailbox,
      lease,
      messages,
      deleted: new Set(),
      retrieved: new Set(),
      renewTimer,
    };
    this.#state = tx;
    clearTimeout(this.#loginTimer);
    this.#log.info({ user: account.address, messages: messages.length }, "logged in");
    return this.#send(ok(maildropSummary(tx)));
  }

  /** The credentials, then the mailbox: what a login waits for, and all the login timeout lets finish. */
  async #checkAndOpen(login: string, password: string): Promise<LoginAttempt> {
    const ctx = this.#ctx;
    let account: Account;
    try {
      const outcome = await checkLogin(ctx, this.#conn.remoteAddress, login, password);
      if (outcome.kind === "throttled") {
        this.#log.warn({ user: login }, "login refused by throttle");
        return { kind: "refused", reply: err("too many failed logins, try later", "AUTH") };
      }
      if (outcome.kind === "bad-credentials") {
        this.#log.warn({ user: login }, "login failed");
        return { kind: "refused", reply: err("invalid user name or password", "AUTH") };
      }
      account = outcome.account;
    } catch (error) {
      this.#log.error({ err: error, user: login }, "directory failed during login");
      return { kind: "refused", reply: storeErrorReply(error, "cannot check the login") };
    }
    if (this.#shuttingDown) return { kind: "refused", reply: SHUTTING_DOWN };
    const holder = `pop3 ${this.#conn.remoteAddress}:${this.#conn.remotePort} on ${ctx.hostname}`;
    const opened = await openMaildrop(ctx, account, holder, () => this.#ending, this.#log);
    return opened.kind === "open" ? { ...opened, account } : opened;
  }

  #renew(): void {
    const state = this.#state;
    if (state.name !== "transaction") return;
    state.lease.renew().catch((error: unknown) => {
      if (this.#state !== state) return;
      if (hasStoreErrorCode(error, "lease-lost")) {
        // Someone else may change the mailbox now; our message numbers can no longer be trusted.
        this.#log.error({ err: error }, "mailbox lease lost");
        this.#leaveTransaction();
        if (this.#busy) {
          this.#ending = true;
          this.#conn.destroy();
        } else {
          this.#endWith(err("mailbox lock lost, please reconnect", "SYS/TEMP"));
        }
      } else {
        this.#log.warn({ err: error }, "lease renew failed, will retry");
      }
    });
  }

  /** QUIT in TRANSACTION: record retrievals, delete the marked messages, and only then say +OK. */
  async #update(tx: TransactionState): Promise<void> {
    this.#state = { name: "update" };
    clearInterval(tx.renewTimer);
    const reply = await commitUpdate(tx, this.#ctx.hostname, this.#log);
    // Released before the reply, so a client that reconnects at once does not find it in use.
    await tx.lease.release().catch((error: unknown) => this.#log.warn({ err: error }, "lease release failed"));
    this.#state = { name: "closed" };
    this.#endWith(reply);
    this.#maybeFinish();
  }
}
