import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPop3Server } from "@mailroom/pop3-protocol";
import { createSmtpServer } from "@mailroom/smtp-protocol";
import { StoreError, fromBytes, hashPassword, type Store } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { TlsContext } from "@mailroom/transport";
import type { DoctorTarget } from "../../src/doctor/index.js";

export const ADDRESS = "alice@local.test";
export const PASSWORD = "Tr0ub4dor&3-doctor-secret";

const dirs: string[] = [];

export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
}

export interface Material {
  readonly cert: string;
  readonly key: string;
}

/** A self-signed certificate for `name`, made by the openssl CLI. */
export function selfSigned(name: string, days = 90): Material {
  const dir = mkdtempSync(join(tmpdir(), "doctor-cert-"));
  dirs.push(dir);
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", String(days), "-subj", `/CN=${name}`,
      "-addext", `subjectAltName=DNS:${name}`, "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem")],
    { stdio: "ignore" },
  );
  return { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") };
}

/**
 * A certificate whose validity ended in the past. OpenSSL 3.0's `req` refuses a negative -days and has
 * no -not_after, but `openssl ca -selfsign` takes explicit start and end dates. Null if that fails.
 */
export function expiredCertificate(name: string): Material | null {
  const dir = mkdtempSync(join(tmpdir(), "doctor-expired-"));
  dirs.push(dir);
  try {
    execFileSync(
      "openssl",
      ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${name}`, "-addext", `subjectAltName=DNS:${name}`,
        "-keyout", join(dir, "key.pem"), "-out", join(dir, "req.csr")],
      { stdio: "ignore" },
    );
    writeFileSync(join(dir, "index.txt"), "");
    writeFileSync(join(dir, "serial"), "01\n");
    writeFileSync(
      join(dir, "ca.cnf"),
      [
        "[ca]", "default_ca = d", "[d]", `database = ${join(dir, "index.txt")}`, `new_certs_dir = ${dir}`,
        `serial = ${join(dir, "serial")}`, "default_md = sha256", "policy = p", "copy_extensions = copy",
        "unique_subject = no", "[p]", "commonName = supplied", "",
      ].join("\n"),
    );
    execFileSync(
      "openssl",
      ["ca", "-batch", "-config", join(dir, "ca.cnf"), "-selfsign", "-keyfile", join(dir, "key.pem"), "-in", join(dir, "req.csr"),
        "-out", join(dir, "cert.pem"), "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-notext"],
      { stdio: "ignore" },
    );
    return { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") };
  } catch {
    return null;
  }
}

export interface Servers {
  readonly store: Store;
  readonly targets: DoctorTarget[];
  target(name: DoctorTarget["name"]): DoctorTarget;
  close(): Promise<void>;
}

/** SMTP (mx + submission + submissions) and POP3 (+ pop3s) on loopback port 0, over one memory store. */
export async function startServers(material: Material, options: { pop3Remote?: boolean; storeDown?: boolean } = {}): Promise<Servers> {
  const store = createMemoryStore();
  await store.directory.addDomain("local.test");
  await store.directory.addAccount({ address: ADDRESS, passwordHash: await hashPassword(PASSWORD, { logN: 10 }) });
  const box = store.mailbox(ADDRESS);
  await box.append(fromBytes("Subject: one\r\n\r\nfirst\r\n"));
  await box.append(fromBytes("Subject: two\r\n\r\nsecond\r\n"));
  const tls = new TlsContext(material);
  const served = options.storeDown ? unavailable(store) : store;
  const smtp = createSmtpServer({ store: served, hostname: "localhost", tls });
  const pop3 = createPop3Server({
    store: served,
    hostname: "localhost",
    tls,
    // Pretend every client is remote, so that the plaintext rule applies to the test's loopback client.
    ...(options.pop3Remote ? { isLocalAddress: () => false } : {}),
  });
  const host = "127.0.0.1";
  const targets: DoctorTarget[] = [
    { name: "smtp", host, port: (await smtp.listen({ host, port: 0, mode: "mx" })).port, implicitTls: false },
    { name: "submission", host, port: (await smtp.listen({ host, port: 0, mode: "submission" })).port, implicitTls: false },
    { name: "submissions", host, port: (await smtp.listen({ host, port: 0, mode: "submission", implicitTls: true })).port, implicitTls: true },
    { name: "pop3", host, port: (await pop3.listen({ host, port: 0 })).port, implicitTls: false },
    { name: "pop3s", host, port: (await pop3.listen({ host, port: 0, implicitTls: true })).port, implicitTls: true },
  ];
  return {
    store,
    targets,
    target: (name) => targets.find((t) => t.name === name)!,
    close: async () => {
      await Promise.all([smtp.close({ deadlineMs: 1000 }), pop3.close({ deadlineMs: 1000 })]);
      await store.close();
    },
  };
}

/**
 * The same store as seen by a server whose backend just went away: account lookups and mailbox
 * leases fail with the store's own "unavailable" error, as a PostgreSQL or Redis outage would.
 */
function unavailable(store: Store): Store {
  const down = (): Promise<never> => Promise.reject(new StoreError("unavailable", "memory: backend down (test)"));
  const failing = <T extends object>(target: T, names: readonly string[]): T =>
    new Proxy(target, {
      get(object, property) {
        if (typeof property === "string" && names.includes(property)) return down;
        const value: unknown = Reflect.get(object, property, object);
        return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(object) : value;
      },
    });
  return {
    kind: store.kind,
    capabilities: store.capabilities,
    directory: failing(store.directory, ["getAccount"]),
    queue: store.queue,
    mailbox: (id) => failing(store.mailbox(id), ["acquireLease", "list"]),
    deliver: (mailboxes, source, deliverOptions) => store.deliver(mailboxes, source, deliverOptions),
    listMailboxes: () => store.listMailboxes(),
    ping: down,
    close: () => store.close(),
  };
}

/** A port that was free a moment ago and has nothing listening now. */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A listener that accepts and never says anything, like a TLS port waiting for a ClientHello. */
export async function silentServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Logs in over plain POP3 (loopback is trusted) and keeps the session, holding the mailbox lease. */
export async function holdPop3Session(port: number): Promise<{ quit: () => Promise<void> }> {
  const socket = connect(port, "127.0.0.1");
  let buffer = "";
  let wake: (() => void) | null = null;
  socket.setEncoding("utf8").on("data", (d: string) => {
    buffer += d;
    wake?.();
  });
  const line = async (): Promise<string> => {
    const deadline = Date.now() + 5000;
    while (!buffer.includes("\r\n")) {
      if (Date.now() > deadline) throw new Error(`no POP3 line; got ${JSON.stringify(buffer)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
    const end = buffer.indexOf("\r\n");
    const text = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    return text;
  };
  await line();
  socket.write(`USER ${ADDRESS}\r\n`);
  await line();
  socket.write(`PASS ${PASSWORD}\r\n`);
  const answer = await line();
  if (!answer.startsWith("+OK")) throw new Error(`holding session could not log in: ${answer}`);
  return {
    quit: async () => {
      socket.write("QUIT\r\n");
      await line();
      socket.destroy();
    },
  };
}

/** Runs the doctor and keeps what it printed. */
export function collector(): { lines: string[]; out: (line: string) => void; text: () => string } {
  const lines: string[] = [];
  return { lines, out: (l) => void lines.push(l), text: () => lines.join("\n") };
}
