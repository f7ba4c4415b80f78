import type { Account, Lease, Logger, Mailbox, MessageInfo } from "@mailroom/store";
import type { Command } from "./commands.js";
import { DotStuffer, err, multiline, ok, storeErrorReply } from "./replies.js";

/**
 * The TRANSACTION state: the only state that holds a mailbox, its lease and the login snapshot.
 * Message n is `messages[n - 1]` for the whole session, whatever arrives or leaves meanwhile.
 */
export interface TransactionState {
  readonly name: "transaction";
  readonly account: Account;
  readonly mailbox: Mailbox;
  readonly lease: Lease;
  readonly messages: readonly MessageInfo[];
  /** Message numbers marked by DELE; removed only at QUIT. */
  readonly deleted: Set<number>;
  /** Message numbers fully retrieved (RETR); recorded at QUIT for the EXPIRE policy. */
  readonly retrieved: Set<number>;
  readonly renewTimer: ReturnType<typeof setInterval>;
}

/** What a handler may do with the connection. */
export interface ReplyChannel {
  send(text: string): Promise<void>;
  /** Writes the pieces as one write, with backpressure; false once the connection is gone. */
  write(parts: readonly (string | Uint8Array)[]): Promise<boolean>;
  readonly log: Logger;
}

type TransactionCommand = Extract<Command, { name: "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "NOOP" | "RSET" }>;

function visible(tx: TransactionState): { count: number; octets: number } {
  let count = 0;
  let octets = 0;
  tx.messages.forEach((m, i) => {
    if (!tx.deleted.has(i + 1)) {
      count++;
      octets += m.size;
    }
  });
  return { count, octets };
}

export const maildropSummary = (tx: TransactionState): string => {
  const { count, octets } = visible(tx);
  return `${count} message${count === 1 ? "" : "s"} (${octets} octets)`;
};

/** The message behind a number, or the -ERR to send. */
function lookup(tx: TransactionState, msg: number): MessageInfo | string {
  const message = msg >= 1 ? tx.messages[msg - 1] : undefined;
  if (!message) return err("no such message");
  if (tx.deleted.has(msg)) return err(`message ${msg} already deleted`);
  return message;
}

export async function handleTransaction(tx: TransactionState, command: TransactionCommand, io: ReplyChannel): Promise<void> {
  switch (command.name) {
    case "STAT": {
      const { count, octets } = visible(tx);
      return io.send(ok(`${count} ${octets}`));
    }
    case "NOOP":
      return io.send(ok());
    case "RSET":
      tx.deleted.clear();
      return io.send(ok(`maildrop has ${maildropSummary(tx)}`));
    case "DELE": {
      const found = lookup(tx, command.msg);
      if (typeof found === "string") return io.send(found);
      tx.deleted.add(command.msg);
      return io.send(ok(`message ${command.msg} deleted`));
    }
    case "LIST":
    case "UIDL": {
      const field = (m: MessageInfo): string => (command.name === "LIST" ? String(m.size) : m.uid);
      if (command.msg !== null) {
        const found = lookup(tx, command.msg);
        return io.send(typeof found === "string" ? found : ok(`${command.msg} ${field(found)}`));
      }
      const lines: string[] = [];
      tx.messages.forEach((m, i) => {
        if (!tx.deleted.has(i + 1)) lines.push(`${i + 1} ${field(m)}`);
      });
      const status = command.name === "LIST" ? ok(maildropSummary(tx)) : ok();
      return io.send(multiline(status, lines));
    }
    case "RETR":
    case "TOP": {
      const found = lookup(tx, command.msg);
      if (typeof found === "string") return io.send(found);
      const status = command.name === "RETR" ? ok(`${found.size} octets`) : ok("top of message follows");
      const options = command.name === "TOP" ? { bodyLines: command.lines } : {};
      const complete = await sendMessage(tx.mailbox, found.uid, options, status, io);
      if (complete && command.name === "RETR") tx.retrieved.add(command.msg);
      return;
    }
  }
}

/**
 * Streams one message: the status line goes out only once the first chunk is in hand, so a store that
 * fails to open the message still gets a clean -ERR. A failure after that cannot be told to the client
 * inside a multi-line reply, so the connection is dropped (nothing is deleted).
 */
async function sendMessage(
  mailbox: Mailbox,
  uid: string,
  options: { bodyLines?: number },
  status: string,
  io: ReplyChannel,
): Promise<boolean> {
  let iterator: AsyncIterator<Uint8Array>;
  let next: IteratorResult<Uint8Array>;
  try {
    iterator = (await mailbox.read(uid, options))[Symbol.asyncIterator]();
    next = await iterator.next();
  } catch (error) {
    io.log.error({ err: error, uid }, "cannot read message");
    await io.send(storeErrorReply(error, "cannot read the message"));
    return false;
  }
  const stuffer = new DotStuffer();
  // The status line, the chunk and (after the last chunk) the terminator go out together. The next
  // chunk is fetched before a chunk is written so the last one can take the terminator along; a
  // message that fits one read (the usual case) therefore costs one socket write, not three.
  let parts: (string | Uint8Array)[] = [status];
  try {
    while (!next.done) {
      for (const piece of stuffer.push(next.value)) parts.push(piece);
      next = await iterator.next();
      if (next.done) break;
      if (!(await io.write(parts))) {
        await iterator.return?.();
        return false;
      }
      parts = [];
    }
  } catch (error) {
    io.log.error({ err: error, uid }, "message stream failed after the reply started");
    // Whatever was gathered is sent, so the client sees a reply cut short rather than none.
    await io.write(parts).catch(() => false);
    throw new MidReplyError();
  }
  parts.push(stuffer.end());
  return io.write(parts);
}

/** The reply is half sent; the only honest thing left is to drop the connection. */
export class MidReplyError extends Error {
  override readonly name = "MidReplyError";
}
