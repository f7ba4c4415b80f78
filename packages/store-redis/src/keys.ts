/**
 * Key layout. Every key starts with the configured prefix (default `mailroom:`). The part in braces is
 * a Redis Cluster hash tag: all keys of one mailbox share `{mb:<id>}` and all directory keys share
 * `{dir}`, so every multi-key script touches a single slot.
 *
 *   <p>{dir}:domains              set     normalised domains
 *   <p>{dir}:accounts             hash    address -> JSON { passwordHash }
 *   <p>{dir}:aliases              zset    "source\ntarget", scored by creation order
 *   <p>{dir}:alias:<source>       zset    targets of one source, scored by creation order
 *   <p>{dir}:alias-seq            string  counter behind the alias scores
 *   <p>{dir}:mailboxes            set     raw ids of mailboxes that ever received mail
 *
 *   <p>{mb:<id>}:next             string  UID counter (INCR), never below Redis' TIME in µs, so UIDs are never reused
 *   <p>{mb:<id>}:used             set     UIDs given explicitly by callers (imports), kept after expunge
 *   <p>{mb:<id>}:seq              string  arrival counter behind the order scores
 *   <p>{mb:<id>}:order            zset    uid, scored by arrival
 *   <p>{mb:<id>}:info             hash    uid -> "size receivedAt retrievedAt" ("-" when never retrieved)
 *   <p>{mb:<id>}:body:<uid>       list    the message octets in chunks of `chunkBytes`
 *   <p>{mb:<id>}:stage:<random>   list    an append in progress; expires unless committed
 *   <p>{mb:<id>}:lease            string  the lease token (SET NX PX)
 *   <p>{mb:<id>}:lease-holder     string  who holds the lease, same expiry
 *   <p>{mb:<id>}:lease-owner      string  the holding process as JSON (processStamp), same expiry
 *
 * `<id>`, `<uid>` and `<source>` are escaped with {@link escapeKeyPart}, so no value can end the hash tag
 * early or pass for another key's separator.
 */

const SPECIAL = /[%{}:]/g;

/**
 * Percent-escapes `%`, `{`, `}` and `:`. Escaping the escape character itself keeps the mapping
 * one-to-one, so two different ids can never land on the same key.
 */
export function escapeKeyPart(value: string): string {
  return value.replace(SPECIAL, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`);
}

export class DirectoryKeys {
  readonly domains: string;
  readonly accounts: string;
  readonly aliases: string;
  readonly aliasSeq: string;
  readonly mailboxes: string;
  private readonly base: string;

  constructor(prefix: string) {
    this.base = `${prefix}{dir}:`;
    this.domains = `${this.base}domains`;
    this.accounts = `${this.base}accounts`;
    this.aliases = `${this.base}aliases`;
    this.aliasSeq = `${this.base}alias-seq`;
    this.mailboxes = `${this.base}mailboxes`;
  }

  aliasTargets(source: string): string {
    return `${this.base}alias:${escapeKeyPart(source)}`;
  }
}

export class MailboxKeys {
  readonly next: string;
  readonly used: string;
  readonly seq: string;
  readonly order: string;
  readonly info: string;
  readonly lease: string;
  readonly leaseHolder: string;
  readonly leaseOwner: string;
  private readonly base: string;

  constructor(prefix: string, id: string) {
    this.base = `${prefix}{mb:${escapeKeyPart(id)}}:`;
    this.next = `${this.base}next`;
    this.used = `${this.base}used`;
    this.seq = `${this.base}seq`;
    this.order = `${this.base}order`;
    this.info = `${this.base}info`;
    this.lease = `${this.base}lease`;
    this.leaseHolder = `${this.base}lease-holder`;
    this.leaseOwner = `${this.base}lease-owner`;
  }

  body(uid: string): string {
    return `${this.base}body:${escapeKeyPart(uid)}`;
  }

  stage(random: string): string {
    return `${this.base}stage:${random}`;
  }
}

/** The prefix must not contain braces: a `{` there would become the hash tag of every key. */
export function assertPrefix(prefix: string, name = "prefix"): void {
  if (/[{}]/.test(prefix)) throw new Error(`redis store: option "${name}" must not contain "{" or "}"`);
}
