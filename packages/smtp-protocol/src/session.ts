import { authenticate, silentLogger, type Account, type Logger, type LoginCache, type LoginThrottle, type Store } from "@mailroom/store";
import { HeldWrites, type Connection, type TlsContext } from "@mailroom/transport";
import { authContinue, authStart, isMechanism, type AuthStep, type Mechanism } from "./auth.js";
import { takeChunk, type BdatPhase, type BdatReturn } from "./bdat.js";
import type { Command, Verb } from "./commands.js";
import { describe, startDelivery, type Delivery, type Transaction } from "./delivery.js";
import { LineReader, parseCommand } from "./parser.js";
import { checkRecipient, checkSender, recipientKey, type PolicyContext, type PostmasterLookup } from "./policy.js";
import { cleanText, formatReply, R, rejectReply, reply, type Reply } from "./replies.js";
import { sanitize } from "./trace.js";
import type { ListenerMode, SessionInfo, SmtpHooks, SmtpLimits } from "./types.js";

/** What every session of one server shares. */
export interface ServerContext {
  readonly store: Store;
  readonly hostname: string;
  readonly tls: TlsContext | undefined;
  readonly logger: Logger;
  readonly throttle: LoginThrottle;
  readonly loginCache: LoginCache;
  readonly allowLoopbackPlaintextAuth: boolean;
  readonly bareLineEndings: "reject" | "normalize";
  readonly limits: SmtpLimits;
  readonly hooks: SmtpHooks;
  readonly relay: "queue" | "refuse";
  readonly postmaster: PostmasterLookup;
}

/**
 * The session state. Only the states that have a transaction carry it, so a handler cannot touch a
 * transaction that does not exist.
 */
type Phase =
  /** Connected, no HELO/EHLO yet (also right after STARTTLS). */
  | { readonly kind: "fresh" }
  /** Greeted, no transaction. */
  | { readonly kind: "idle" }
  /** MAIL accepted; RCPTs and maybe BDAT chunks so far. */
  | { readonly kind: "mail"; readonly tx: Transaction }
  /** Reading DATA up to <CRLF>.<CRLF>. */
  | { readonly kind: "data"; readonly tx: Transaction; readonly delivery: Delivery }
  | BdatPhase
  /** In an AUTH exchange, waiting for a SASL response line. */
  | { readonly kind: "auth"; readonly mechanism: Mechanism; readonly login: string | null }
  | { readonly kind: "closed" };

const EMPTY = new Uint8Array(0);
const decoder = new TextDecoder();
const encoder = new TextEncoder();
/** RFC 4954 4: AUTH response lines may be up to 12288 octets. */
const MAX_AUTH_LINE = 12_288;
/**
 * What a MAIL line may have beyond maxCommandLine: the extensions we offer raise its limit for their
 * parameters, AUTH= by 500 octets (RFC 4954 5), SIZE= by 26 (RFC 1870), BODY= by 16 (RFC 6152) and
 * SMTPUTF8 by 10 (RFC 6531); 100 more for RET=/ENVID= (RFC 3461), so that a DSN client's line
 * is read and its parameters answered with 555 rather than "Line too long". Other commands keep
 * the plain limit (we offer no extension that raises theirs).
 */
const MAIL_LINE_EXTRA = 500 + 26 + 16 + 10 + 100;
/**
 * The longest reverse path, in octets: the extension allowance is for parameters, and a Return-Path
 * header must stay well inside the 998-octet line limit (RFC 5322 2.1.1). More than a 512-octet MAIL line
 * could carry before, and twice the 256 that RFC 5321 4.5.3.1.3 asks for.
 */
const MAX_PATH_OCTETS = 512;
/** After "500 Line too long", how much more of that line is swallowed before the session is ended. */
const MAX_DISCARDED_LINE = 64 * 1024;
const PAUSE_ABOVE = 256 * 1024;
const RESUME_BELOW = 64 * 1024;

export class Session {
  readonly #ctx: ServerContext;
  readonly #conn: Connection;
  readonly #mode: ListenerMode;
  readonly #log: Logger;
  readonly #onClosed: (session: Session) => void;
  readonly #lines: LineReader;
  #phase: Phase = { kind: "fresh" };
  #helo: { readonly name: string; readonly extended: boolean } | null = null;
  #user: Account | null = null;
  #input: Uint8Array[] = [];
  #inputBytes = 0;
  #busy = false;
  #discardInput = false;
  #unknown = 0;
  #errors = 0;
  #transactions = 0;
  #shuttingDown = false;
  #writeBlocked = false;
  /** Ends the connection at the session time limit. */
  #sessionTimer: ReturnType<typeof setTimeout> | undefined;
  #overTime = false;
  /** The client shut down its sending side: what it sent is answered, then the session ends. */
  #inputEnded = false;
  /** Replies held while more of the client's input waits to be handled (inside #run). */
  readonly #replies: HeldWrites;
  /** The signal handed to store deliveries; replaced once aborted (see #startDelivery). */
  #controller: AbortController | null = null;
  /** Set by STARTTLS: the rest of the current input was sent in the clear and is thrown away. */
  #dropRest = false;

  constructor(ctx: ServerContext, connection: Connection, mode: ListenerMode, onClosed: (session: Session) => void) {
    this.#ctx = ctx;
    this.#conn = connection;
    this.#replies = new HeldWrites(connection);
    this.#mode = mode;
    this.#onClosed = onClosed;
    this.#lines = new LineReader(ctx.limits.maxCommandLine);
    this.#log = (ctx.logger ?? silentLogger).child({ session: connection.id, mode });
  }

  get id(): string {
    return this.#conn.id;
  }

  get info(): SessionInfo {
    return {
      id: this.#conn.id,
      mode: this.#mode,
      remoteAddress: this.#conn.remoteAddress,
      remotePort: this.#conn.remotePort,
      localAddress: this.#conn.localAddress,
      localPort: this.#conn.localPort,
      secure: this.#conn.secure,
      tls: this.#conn.tls,
      helo: this.#helo?.name ?? null,
      user: this.#user,
    };
  }

  /** Takes over the connection and greets (or refuses) the client. */
  async start(): Promise<void> {
    this.#log.info({ remote: `${this.#conn.remoteAddress}:${this.#conn.remotePort}`, secure: this.#conn.secure }, "connect");
    this.#conn.start({
      data: (chunk) => this.#onData(chunk),
      inputEnd: () => this.#onInputEnd(),
      close: () => this.#onClose(),
      timeout: (reason) => this.#onTimeout(reason),
    });
    this.#waitFor(this.#ctx.limits.timeouts.command, this.#ctx.limits.timeouts.command);
    if (this.#ctx.limits.timeouts.session > 0) {
      this.#sessionTimer = setTimeout(() => this.#onSessionTimeout(), this.#ctx.limits.timeouts.session);
      this.#sessionTimer.unref?.();
    }
    // Hold commands back until the greeting is out: bytes sent before it are kept and answered in order.
    this.#busy = true;
    try {
      if (this.#ctx.hooks.onConnect) {
        const verdict = await this.#ctx.hooks.onConnect(this.info);
        if (!("ok" in verdict)) {
          this.#log.info({ reason: verdict.message }, "refused at connect");
          this.#close(rejectReply("connect", verdict));
          return;
        }
      }
      this.#write(reply(220, undefined, `${this.#ctx.hostname} ESMTP Mailroom ready`));
    } catch (error) {
      this.#log.warn({ error: describe(error) }, "connect hook failed");
      this.#close(reply(421, "4.3.0", `${this.#ctx.hostname} temporary failure, try again later`));
      return;
    } finally {
      this.#busy = false;
    }
    void this.#run();
  }

  /** Server shutdown: idle sessions are told at once, a message in flight may finish first. */
  shutdown(): void {
    this.#shuttingDown = true;
    if (!this.#busy && !this.#inData()) this.#close(R.shuttingDown(this.#ctx.hostname));
  }

  /** Drops the connection without a word (shutdown deadline passed). */
  destroy(): void {
    this.#abortTransaction();
    this.#conn.destroy();
  }

  // ---- input loop --------------------------------------------------------------------------------

  #onData(chunk: Uint8Array): void {
    if (this.#phase.kind === "closed" || this.#discardInput) return;
    // Kept as it is (the transport hands over fresh buffers); the DATA decoder gives out views of it.
    this.#input.push(chunk);
    this.#inputBytes += chunk.length;
    if (this.#inputBytes > PAUSE_ABOVE) this.#conn.pause();
    void this.#run();
  }

  async #run(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    this.#replies.hold();
    try {
      while (this.#phase.kind !== "closed") {
        const chunk = this.#input.shift();
        if (chunk === undefined) break;
        this.#inputBytes -= chunk.length;
        const rest = await this.#consume(chunk);
        if (rest.length > 0 && !this.#discardInput) {
          this.#input.unshift(rest);
          this.#inputBytes += rest.length;
        }
        // Nothing more to answer right now: whatever was held goes out together. (Never wait for the
        // client with replies held: it may be waiting for them.)
        if (this.#input.length === 0) this.#flush();
        if (this.#inputBytes < RESUME_BELOW) this.#conn.resume();
        if (this.#writeBlocked) {
          // The client does not read its replies (a pipelining flood): stop reading until it does.
          await this.#conn.drained();
          this.#writeBlocked = false;
        }
        if (this.#shuttingDown && !this.#inData() && !this.#isClosed()) this.#close(R.shuttingDown(this.#ctx.hostname));
        if (this.#overTime && !this.#isClosed()) this.#close(R.sessionTooLong(this.#ctx.hostname));
      }
    } catch (error) {
      this.#log.error({ error: describe(error) }, "session failed");
      this.#close(reply(421, "4.3.0", `${this.#ctx.hostname} internal error, closing connection`));
    } finally {
      this.#flush();
      this.#replies.release();
      this.#busy = false;
    }
    if (this.#shuttingDown && !this.#inData() && this.#phase.kind !== "closed") this.#close(R.shuttingDown(this.#ctx.hostname));
    if (this.#overTime && this.#phase.kind !== "closed") this.#close(R.sessionTooLong(this.#ctx.hostname));
    if (this.#inputBytes < RESUME_BELOW && this.#phase.kind !== "closed") this.#conn.resume();
    // Everything the client sent before it shut down its side is answered; now end ours. A message
    // it had not finished is dropped (#close aborts it), as when a connection is lost.
    if (this.#inputEnded && this.#input.length === 0 && this.#phase.kind !== "closed") {
      this.#log.info({ phase: this.#phase.kind }, "client ended its input");
      this.#close();
    }
  }

  #onInputEnd(): void {
    this.#inputEnded = true;
    void this.#run();
  }

  // A method, not an inline test: TypeScript would keep the narrowing across awaits that change the phase.
  #isClosed(): boolean {
    return this.#phase.kind === "closed";
  }

  #inData(): boolean {
    const kind = this.#phase.kind;
    return kind === "data" || kind === "bdat";
  }

  /** Handles the start of `input`; returns what it did not use. */
  async #consume(input: Uint8Array): Promise<Uint8Array> {
    const phase = this.#phase;
    switch (phase.kind) {
      case "closed":
        return EMPTY;
      case "data": {
        const { output, done, rest } = phase.delivery.decoder.push(input);
        await this.#feed(phase.delivery, output);
        if (done) await this.#endOfMessage(phase.tx, phase.delivery);
        return rest;
      }
      case "bdat": {
        const { chunk, rest } = takeChunk(phase.remaining, input);
        phase.remaining -= chunk.length;
        await this.#feed(phase.delivery, phase.delivery.decoder.push(chunk).output);
        if (phase.remaining === 0) await this.#chunkComplete(phase);
        return rest;
      }
      case "bdat-discard": {
        const { chunk, rest } = takeChunk(phase.remaining, input);
        phase.remaining -= chunk.length;
        if (phase.remaining === 0) this.#discardComplete(phase);
        return rest;
      }
      default: {
        const max =
          phase.kind === "auth"
            ? MAX_AUTH_LINE
            : this.#lines.startsWith(input, "MAIL ")
              ? this.#ctx.limits.maxCommandLine + MAIL_LINE_EXTRA
              : this.#ctx.limits.maxCommandLine;
        const { line, used } = this.#lines.take(input, max);
        if (line === "too-long") {
          if (phase.kind === "auth") this.#phase = { kind: "idle" };
          this.#error(R.lineTooLong());
        } else if (line !== null) {
          const text = decoder.decode(line);
          if (phase.kind === "auth") await this.#authResponse(phase, text);
          else await this.#command(text);
        }
        if (this.#lines.discarding > MAX_DISCARDED_LINE) {
          // A line that never ends would otherwise keep the connection (and its slot) forever.
          this.#log.info({ discarded: this.#lines.discarding }, "endless command line");
          this.#close(R.lineTooLongClose(this.#ctx.hostname));
          return EMPTY;
        }
        if (this.#dropRest) {
          this.#dropRest = false;
          return EMPTY;
        }
        return input.subarray(used);
      }
    }
  }

  async #feed(delivery: Delivery, output: Uint8Array): Promise<void> {
    if (delivery.decoder.problem !== null) {
      // The message will be refused: stop the store now, keep reading to the end.
      this.#abortDelivery(delivery, "message refused");
      return;
    }
    delivery.queue.push(output);
    await delivery.queue.space();
  }

  // ---- writing and closing -------------------------------------------------------------------------

  #write(r: Reply): void {
    if (this.#phase.kind === "closed") return;
    if (!this.#replies.write([formatReply(r)])) this.#writeBlocked = true;
  }

  /** Sends the held replies in one write. */
  #flush(): void {
    if (this.#phase.kind === "closed") this.#replies.discard();
    else if (!this.#replies.flush()) this.#writeBlocked = true;
  }

  /** Sends an error reply and counts it; too many end the session. */
  #error(r: Reply): void {
    this.#write(r);
    if (++this.#errors >= this.#ctx.limits.maxErrors) {
      this.#log.info({ errors: this.#errors }, "too many errors");
      this.#close(R.tooManyErrors(this.#ctx.hostname));
    }
  }

  #send(r: Reply): void {
    if (r.code >= 400) this.#error(r);
    else this.#write(r);
  }

  #close(last?: Reply): void {
    if (this.#phase.kind === "closed") return;
    this.#flush();
    this.#abortTransaction();
    if (last) this.#conn.end(formatReply(last));
    else this.#conn.end();
    this.#phase = { kind: "closed" };
  }

  #onTimeout(reason: "idle" | "line"): void {
    this.#log.info({ phase: this.#phase.kind, reason }, "timeout");
    this.#close(R.timeout(this.#ctx.hostname));
  }

  /** How long the client may be silent, and how long one of its lines may take once begun. */
  #waitFor(idleMs: number, lineMs: number): void {
    this.#conn.setIdleTimeout(idleMs);
    this.#conn.setLineTimeout(lineMs);
  }

  #onSessionTimeout(): void {
    if (this.#phase.kind === "closed") return;
    this.#log.info({ phase: this.#phase.kind }, "session time limit");
    this.#overTime = true;
    // A command or a message's delivery under way finishes first (#run ends the session after it),
    // so a message the store took is answered: dropping its 250 would make the sender send it again.
    if (!this.#busy) this.#close(R.sessionTooLong(this.#ctx.hostname));
  }

  #onClose(): void {
    clearTimeout(this.#sessionTimer);
    if (this.#phase.kind !== "closed") {
      this.#abortTransaction();
      this.#phase = { kind: "closed" };
    }
    this.#input = [];
    this.#log.info({}, "close");
    this.#onClosed(this);
  }

  // ---- commands ----------------------------------------------------------------------------------

  async #command(line: string): Promise<void> {
    const parsed = parseCommand(line);
    if (!parsed.ok) {
      if (parsed.error === "unknown") {
        if (++this.#unknown >= this.#ctx.limits.maxUnknownCommands) {
          this.#log.info({ unknown: this.#unknown }, "too many unknown commands");
          this.#close(R.tooManyErrors(this.#ctx.hostname));
        } else this.#error(R.unknownCommand());
      } else this.#error(R.syntax(parsed.message));
      return;
    }
    const command = parsed.command;
    const handler = this.#handlers[command.verb] as (c: Command) => void | Promise<void>;
    try {
      await handler(command);
    } catch (error) {
      // Store or hook failures while checking: temporary, details in the log only.
      this.#log.warn({ verb: command.verb, error: describe(error) }, "command failed");
      this.#error(R.lookupTemporary());
    }
  }

  readonly #handlers: { readonly [V in Verb]: (command: Command & { verb: V }) => void | Promise<void> } = {
    EHLO: (c) => this.#hello(c.domain, true),
    HELO: (c) => this.#hello(c.domain, false),
    MAIL: (c) => this.#mail(c),
    RCPT: (c) => this.#rcpt(c),
    DATA: () => this.#data(),
    BDAT: (c) => this.#bdat(c),
    RSET: () => {
      this.#abortTransaction();
      if (this.#phase.kind !== "fresh") this.#phase = { kind: "idle" };
      this.#write(R.ok());
    },
    NOOP: () => this.#write(R.ok()),
    QUIT: () => {
      this.#close(R.bye(this.#ctx.hostname));
    },
    VRFY: () => this.#write(R.vrfy()),
    EXPN: () => this.#error(R.notImplemented()),
    HELP: () => this.#write(R.help()),
    STARTTLS: () => this.#startTls(),
    AUTH: (c) => this.#auth(c),
  };

  #hello(domain: string, extended: boolean): void {
    this.#abortTransaction();
    this.#helo = { name: domain, extended };
    this.#phase = { kind: "idle" };
    this.#log.info({ helo: cleanText(domain, 100), extended }, "helo");
    const host = this.#ctx.hostname;
    if (!extended) {
      this.#write(reply(250, undefined, host));
      return;
    }
    // ASCII, as in the Received header: replies are 7-bit whatever the client calls itself.
    const lines = [`${host} greets ${sanitize(domain, 64)}`, "PIPELINING", `SIZE ${this.#ctx.limits.maxMessageBytes}`, "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"];
    if (this.#ctx.tls && !this.#conn.secure) lines.push("STARTTLS");
    if (this.#mode === "submission" && this.#authAllowed()) lines.push("AUTH PLAIN LOGIN");
    this.#write(reply(250, undefined, ...lines));
  }

  #policy(): PolicyContext {
    return { store: this.#ctx.store, hostname: this.#ctx.hostname, mode: this.#mode, hooks: this.#ctx.hooks, info: this.info, relay: this.#ctx.relay, postmaster: this.#ctx.postmaster };
  }

  async #mail(c: Extract<Command, { verb: "MAIL" }>): Promise<void> {
    const phase = this.#phase;
    if (phase.kind === "fresh") return this.#error(R.badSequence("Send EHLO or HELO first"));
    if (phase.kind !== "idle") return this.#error(R.badSequence("Sender already specified"));
    if (this.#mode === "submission" && !this.#user) return this.#error(R.authRequired());
    if (this.#transactions >= this.#ctx.limits.maxTransactionsPerConnection) {
      return this.#close(R.tooManyTransactions(this.#ctx.hostname));
    }
    let utf8 = false;
    let declared = 0;
    for (const [key, value] of c.params) {
      if (key === "SIZE") {
        if (typeof value !== "string" || !/^\d{1,15}$/.test(value)) return this.#error(R.syntax("SIZE needs a number"));
        // RFC 1870: refuse before any data is sent when the declared size is already too big.
        declared = Number(value);
        if (declared > this.#ctx.limits.maxMessageBytes) return this.#error(R.sizeExceeded());
      } else if (key === "BODY" && typeof value === "string" && ["7BIT", "8BITMIME"].includes(value.toUpperCase())) {
        // Nothing to do: messages are stored as the octets received.
      } else if (key === "SMTPUTF8" && value === true && this.#helo?.extended) {
        utf8 = true;
      } else if (key === "AUTH" && typeof value === "string") {
        // RFC 4954 5: accepted and not trusted; we do not relay, so it carries no meaning here.
      } else return this.#error(R.badParam(key));
    }
    if (c.path.utf8 && !utf8) return this.#error(R.needUtf8());
    const pathOctets = c.path.utf8 ? encoder.encode(c.path.address).length : c.path.address.length;
    if (pathOctets > MAX_PATH_OCTETS) return this.#error(R.syntax("path too long"));
    // RFC 1870 (452 for a size the server cannot take now), as Postfix does: a store that cannot take
    // the message (its free-space reserve is reached) says so before the client uploads it only to
    // hear the same at the end. Without SIZE= the question is whether it takes new mail at all.
    const room = await this.#storeHasRoom(declared);
    // The client may have gone while the store was asked: nothing is left to answer, and the sender
    // check (the onMailFrom hook, perhaps a lookup of its own) would be work for a dead session.
    if (this.#isClosed()) return;
    if (!room) {
      this.#log.info({ from: cleanText(c.path.address, 100), size: declared }, "mail from refused: insufficient storage");
      return this.#error(R.storeNoSpace());
    }
    const decision = await checkSender(this.#policy(), c.path);
    if (this.#phase.kind === "closed") return; // the session ended while the sender was checked
    if (!decision.ok) {
      this.#log.info({ from: cleanText(c.path.address, 100), code: decision.reply.code }, "mail from refused");
      return this.#error(decision.reply);
    }
    this.#transactions++;
    const id = `${this.#conn.id}${this.#transactions.toString(36)}`.toUpperCase();
    this.#phase = { kind: "mail", tx: { id, mailFrom: c.path.address, utf8, recipients: [], keys: new Set(), accepted: 0, bdat: null } };
    this.#log.info({ id, from: cleanText(c.path.address, 100) }, "mail from");
    this.#write(R.senderOk());
  }

  /**
   * The store's own answer where it has one (`Store.hasRoomFor`). A store that cannot answer does not
   * keep mail out: the delivery itself still refuses what does not fit.
   */
  async #storeHasRoom(octets: number): Promise<boolean> {
    const store = this.#ctx.store;
    if (store.hasRoomFor === undefined) return true;
    try {
      return (await store.hasRoomFor(octets)) !== false;
    } catch (error) {
      this.#log.warn({ error: describe(error) }, "store could not say whether it has room; taking the mail");
      return true;
    }
  }

  async #rcpt(c: Extract<Command, { verb: "RCPT" }>): Promise<void> {
    const phase = this.#phase;
    if (phase.kind !== "mail") return this.#error(R.badSequence("Need MAIL command first"));
    if (phase.tx.bdat) return this.#error(R.badSequence("RCPT not allowed after BDAT"));
    for (const key of c.params.keys()) return this.#error(R.badParam(key));
    if (c.path.utf8 && !phase.tx.utf8) return this.#error(R.needUtf8());
    // RFC 5321 4.5.3.1.10: the client sends the rest in another transaction. Not counted as an error, or
    // a client pipelining more than maxErrors extra recipients would lose the whole message to a 421.
    if (phase.tx.accepted >= this.#ctx.limits.maxRecipients) return this.#write(R.tooManyRecipients());
    const decision = await checkRecipient(this.#policy(), c.path);
    const to = cleanText(c.path.address, 100);
    if (!decision.ok) {
      this.#log.info({ id: phase.tx.id, to, code: decision.reply.code }, "rcpt refused");
      return this.#error(decision.reply);
    }
    if (this.#phase !== phase) return; // the session ended while we looked the address up
    const address = decision.value.address ?? c.path.address;
    const key = recipientKey(address, decision.value.relay);
    // Answered 250 and counted against maxRecipients as any other RCPT (as Postfix does), but a
    // recipient named twice gets one copy: a relayed one would otherwise be queued and sent twice.
    phase.tx.accepted++;
    if (phase.tx.keys.has(key)) {
      this.#log.info({ id: phase.tx.id, to }, "rcpt duplicate");
      return this.#write(R.recipientOk());
    }
    phase.tx.keys.add(key);
    phase.tx.recipients.push({ address, mailboxes: decision.value.mailboxes, relay: decision.value.relay });
    this.#log.info({ id: phase.tx.id, to }, "rcpt");
    this.#write(R.recipientOk());
  }

  #data(): void {
    const phase = this.#phase;
    if (phase.kind !== "mail") return this.#error(R.badSequence("Need MAIL command first"));
    if (phase.tx.bdat) return this.#error(R.badSequence("DATA not allowed after BDAT"));
    if (phase.tx.recipients.length === 0) return this.#error(R.badSequence("Need RCPT command first"));
    const delivery = this.#startDelivery(phase.tx, "dot");
    this.#phase = { kind: "data", tx: phase.tx, delivery };
    this.#waitFor(this.#ctx.limits.timeouts.dataBlock, this.#ctx.limits.timeouts.dataBlock);
    this.#write(R.startData());
  }

  async #bdat(c: Extract<Command, { verb: "BDAT" }>): Promise<void> {
    const phase = this.#phase;
    if (c.size > this.#ctx.limits.maxMessageBytes) {
      // Reading it only to throw it away would let a client keep us busy without end.
      this.#close(R.chunkTooBig());
      return;
    }
    let refusal: Reply | null = null;
    if (phase.kind !== "mail") refusal = R.badSequence("Need MAIL command first");
    else if (phase.tx.recipients.length === 0) refusal = R.badSequence("Need RCPT command first");
    if (refusal || phase.kind !== "mail") {
      const back: BdatReturn = phase.kind === "fresh" || phase.kind === "mail" ? phase : { kind: "idle" };
      this.#phase = { kind: "bdat-discard", remaining: c.size, reply: refusal ?? R.badSequence("Bad sequence"), back };
      // A chunk is octets, not lines.
      this.#waitFor(this.#ctx.limits.timeouts.dataBlock, 0);
      if (c.size === 0) this.#discardComplete(this.#phase);
      return;
    }
    const delivery = phase.tx.bdat ?? this.#startDelivery(phase.tx, "raw");
    phase.tx.bdat = delivery;
    const next: BdatPhase = { kind: "bdat", tx: phase.tx, delivery, size: c.size, remaining: c.size, last: c.last };
    this.#phase = next;
    this.#waitFor(this.#ctx.limits.timeouts.dataBlock, 0);
    if (c.size === 0) await this.#chunkComplete(next);
  }

  async #chunkComplete(phase: Extract<BdatPhase, { kind: "bdat" }>): Promise<void> {
    const { tx, delivery } = phase;
    // The size counts on after another problem (a long line, a bare LF) was found first, so the cap
    // holds for such a message too: otherwise endless chunks would all get 250.
    if (delivery.decoder.problem === "too-big" || delivery.decoder.size > this.#ctx.limits.maxMessageBytes) {
      // Refuse now rather than after LAST: the client may stop sending.
      this.#abortDelivery(delivery, "message too big");
      this.#endTransaction();
      this.#error(R.sizeExceeded());
      return;
    }
    if (phase.last) {
      await this.#feed(delivery, delivery.decoder.finish());
      await this.#endOfMessage(tx, delivery);
      return;
    }
    this.#phase = { kind: "mail", tx };
    this.#waitFor(this.#ctx.limits.timeouts.command, this.#ctx.limits.timeouts.command);
    this.#write(R.chunkOk(phase.size));
  }

  #discardComplete(phase: Extract<BdatPhase, { kind: "bdat-discard" }>): void {
    this.#phase = phase.back;
    this.#waitFor(this.#ctx.limits.timeouts.command, this.#ctx.limits.timeouts.command);
    this.#error(phase.reply);
  }

  #startTls(): void | Promise<void> {
    const tls = this.#ctx.tls;
    if (this.#conn.secure) return this.#error(R.badSequence("Already running TLS"));
    if (!tls) return this.#error(R.tlsUnavailable());
    if (this.#phase.kind === "mail") return this.#error(R.badSequence("STARTTLS not allowed during a mail transaction"));
    this.#write(R.startTls());
    // The 220 must be out before the handshake starts on the same socket.
    this.#flush();
    // Anything pipelined after STARTTLS came in the clear and must not be taken as sent under TLS.
    this.#discardInput = true;
    this.#dropRest = true;
    this.#input = [];
    this.#inputBytes = 0;
    this.#lines.reset();
    return this.#conn.upgradeToTls(tls).then(
      () => {
        this.#discardInput = false;
        // RFC 3207 4.2: forget everything learned before TLS.
        this.#helo = null;
        this.#user = null;
        this.#phase = { kind: "fresh" };
        this.#log.info({ tls: this.#conn.tls }, "starttls");
      },
      (error: unknown) => {
        this.#log.info({ error: describe(error) }, "tls handshake failed");
        this.#phase = { kind: "closed" };
      },
    );
  }

  // ---- AUTH --------------------------------------------------------------------------------------

  #authAllowed(): boolean {
    return this.#conn.secure || (this.#ctx.allowLoopbackPlaintextAuth && this.#conn.isLoopback);
  }

  async #auth(c: Extract<Command, { verb: "AUTH" }>): Promise<void> {
    if (this.#mode !== "submission") return this.#error(R.notImplemented());
    if (this.#phase.kind === "fresh") return this.#error(R.badSequence("Send EHLO first"));
    if (this.#phase.kind !== "idle") return this.#error(R.badSequence("AUTH not allowed during a mail transaction"));
    if (this.#user) return this.#error(R.badSequence("Already authenticated"));
    if (!this.#authAllowed()) return this.#error(R.authNeedsTls());
    if (!isMechanism(c.mechanism)) return this.#error(R.authMechanism());
    await this.#authStep(authStart(c.mechanism, c.initial));
  }

  async #authResponse(phase: Extract<Phase, { kind: "auth" }>, line: string): Promise<void> {
    await this.#authStep(authContinue(phase.mechanism, phase.login, line));
  }

  async #authStep(step: AuthStep): Promise<void> {
    this.#phase = { kind: "idle" };
    switch (step.kind) {
      case "challenge":
        this.#phase = { kind: "auth", mechanism: step.mechanism, login: step.login };
        return this.#write(R.authChallenge(step.challenge));
      case "fail":
        return this.#error(step.why === "cancelled" ? R.authCancelled() : step.why === "decode" ? R.authDecode() : R.authFailed());
      case "verify":
        return this.#verify(step.login, step.password);
    }
  }

  async #verify(login: string, password: string): Promise<void> {
    const client = this.#conn.remoteAddress;
    const shownLogin = cleanText(login, 100);
    const throttle = this.#ctx.throttle;
    const delay = throttle.delayFor(client, login);
    if (delay === Infinity) {
      this.#log.warn({ login: shownLogin }, "auth refused: too many failures");
      return this.#error(R.authTemp());
    }
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    let account: Account | null;
    try {
      account = this.#ctx.hooks.onAuth
        ? await this.#ctx.hooks.onAuth(login, password, this.info)
        : await authenticate(this.#ctx.store.directory, login, password, this.#ctx.loginCache);
    } catch (error) {
      this.#log.warn({ login: shownLogin, error: describe(error) }, "auth lookup failed");
      return this.#error(R.authTemp());
    }
    if (this.#phase.kind === "closed") return;
    if (!account) {
      throttle.failure(client, login);
      this.#log.info({ login: shownLogin }, "auth failed");
      return this.#error(R.authFailed());
    }
    throttle.success(client, login);
    this.#user = account;
    this.#log.info({ login: shownLogin, user: account.address }, "auth ok");
    this.#write(R.authOk());
  }

  // ---- delivery ----------------------------------------------------------------------------------

  #startDelivery(tx: Transaction, mode: "dot" | "raw"): Delivery {
    // A store lets go of the signal when its delivery settles (store contract), so one controller serves
    // every delivery of the session until one is aborted: creating one cost ~15 µs per message in
    // profiles. An onData hook may keep its signal for as long as it likes, so it gets its own.
    let controller: AbortController;
    if (this.#ctx.hooks.onData) controller = new AbortController();
    else controller = this.#controller ??= new AbortController();
    const context = {
      controller,
      store: this.#ctx.store,
      hooks: this.#ctx.hooks,
      info: this.info,
      hostname: this.#ctx.hostname,
      extended: this.#helo?.extended ?? false,
      limits: this.#ctx.limits,
      bareLineEndings: this.#ctx.bareLineEndings,
      log: (fields: Record<string, unknown>, message: string) => this.#log.warn(fields, message),
    };
    return startDelivery(context, tx, mode);
  }

  /** The message is complete: wait for the store, then answer. */
  async #endOfMessage(tx: Transaction, delivery: Delivery): Promise<void> {
    const problem = delivery.decoder.problem;
    let answer: Reply;
    if (problem !== null) {
      this.#abortDelivery(delivery, "message refused");
      await delivery.result;
      answer = problem === "too-big" ? R.sizeExceeded() : problem === "line-too-long" ? R.textLineTooLong() : R.bareLineEnding();
      this.#log.info({ id: tx.id, problem, size: delivery.decoder.size }, "message refused");
    } else {
      delivery.queue.end();
      // What the client sends next is a command.
      this.#waitFor(this.#ctx.limits.timeouts.dataEnd, this.#ctx.limits.timeouts.command);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<Reply>((resolve) => {
        timer = setTimeout(() => {
          this.#abortDelivery(delivery, "store timed out");
          resolve(R.storeTemporary());
        }, this.#ctx.limits.timeouts.dataEnd);
      });
      answer = await Promise.race([delivery.result, late]);
      clearTimeout(timer);
      this.#log.info({ id: tx.id, size: delivery.decoder.size, recipients: tx.recipients.length, code: answer.code }, "message done");
    }
    if (this.#phase.kind === "closed") return;
    this.#endTransaction();
    // As Postfix's error limits: they count errors made without delivering mail, so a long MTA
    // connection is not ended by rejections spread over many good messages.
    if (answer.code < 400) this.#errors = 0;
    this.#send(answer);
  }

  #endTransaction(): void {
    if (this.#phase.kind === "closed") return;
    this.#phase = { kind: "idle" };
    this.#waitFor(this.#ctx.limits.timeouts.command, this.#ctx.limits.timeouts.command);
  }

  #abortDelivery(delivery: Delivery, why: string): void {
    if (delivery.controller.signal.aborted) return;
    const reason = new Error(why);
    if (delivery.controller === this.#controller) this.#controller = null;
    delivery.controller.abort(reason);
    delivery.queue.fail(reason);
  }

  /** Drops the transaction in progress; a message already streaming into the store is aborted. */
  #abortTransaction(): void {
    const phase = this.#phase;
    if (phase.kind === "data" || phase.kind === "bdat") this.#abortDelivery(phase.delivery, "transaction aborted");
    else if (phase.kind === "mail" && phase.tx.bdat) this.#abortDelivery(phase.tx.bdat, "transaction aborted");
  }
}

