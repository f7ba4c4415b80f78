import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, createRegistry, loadConfig, openStore } from "../src/index.js";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { cleanup, tempDir, writeFile } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const where = (key: string) => `mailroom.toml: ${key}`;

// A third-party adapter as an operator would ship it: a module whose default export is a StoreAdapter.
// It hands out memory stores so that the test can use it end to end.
const adapterModule = writeFile(
  dir,
  "tape-adapter.mjs",
  `import memory from "${new URL("../node_modules/@mailroom/store/dist/memory/index.js", import.meta.url).href}";
export default {
  name: "tape",
  schemes: ["tape"],
  optionKeys: ["reel"],
  async open(url, options) {
    const store = await memory.open("memory:" + url.slice(5) + "-" + (options?.reel ?? "none"));
    return Object.assign(Object.create(Object.getPrototypeOf(store)), store, { kind: "tape" });
  },
};
`,
);
const notAnAdapter = writeFile(dir, "not-an-adapter.mjs", "export default { hello: 1 };\n");

describe("adapter registry", () => {
  it("knows the built-in schemes", async () => {
    const registry = await createRegistry({ where });
    expect(registry.schemes).toEqual(expect.arrayContaining(["memory", "maildir", "postgres", "postgresql", "redis", "rediss"]));
  });

  it("loads the adapter of the URL's scheme", async () => {
    const registry = await createRegistry({ where });
    expect((await registry.adapterFor("memory:x")).name).toBe("memory");
    expect((await registry.adapterFor("maildir:./data")).name).toBe("maildir");
    expect((await registry.adapterFor("postgresql://127.0.0.1/db")).name).toBe("postgres");
  });

  it("rejects an unknown scheme, naming the key and suggesting a near one", async () => {
    const registry = await createRegistry({ where });
    const error = await registry.adapterFor("postgress://x").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(/^mailroom\.toml: store\.url: no store adapter for the scheme "postgress:" \(did you mean "postgres:"\?\)/);
  });

  it("plugs in adapter modules by scheme", async () => {
    const registry = await createRegistry({ adapterModules: ["./tape-adapter.mjs"], baseDir: dir, where });
    expect(registry.schemes).toContain("tape");
    const adapter = await registry.adapterFor("tape:one");
    expect(adapter.name).toBe("tape");
  });

  it("loads an ESM-only adapter package (exports for import alone) and a CommonJS one from the config's node_modules", async () => {
    const adapterSource = (scheme: string) =>
      `{ name: "${scheme}", schemes: ["${scheme}"], optionKeys: [], async open() { throw new Error("not here"); } }`;
    const packageDir = (name: string) => join(dir, "node_modules", name);
    const put = (folder: string, name: string, text: string): void => {
      mkdirSync(folder, { recursive: true });
      writeFile(folder, name, text);
    };
    put(packageDir("esm-only-adapter"), "package.json", JSON.stringify({ name: "esm-only-adapter", type: "module", exports: { ".": { import: "./lib/index.js" } } }));
    put(join(packageDir("esm-only-adapter"), "lib"), "index.js", `export default ${adapterSource("esmonly")};\n`);
    // What tsc emits for `export default adapter` with "module": "commonjs".
    put(packageDir("cjs-adapter"), "package.json", JSON.stringify({ name: "cjs-adapter", main: "index.js" }));
    put(packageDir("cjs-adapter"), "index.js", `"use strict";\nObject.defineProperty(exports, "__esModule", { value: true });\nexports.default = ${adapterSource("cjsone")};\n`);
    // And one that exports the adapter under a subpath, for "import" alone, from a scoped package.
    put(packageDir("@site/adapters"), "package.json", JSON.stringify({ name: "@site/adapters", type: "module", exports: { "./tape": { node: { import: "./tape.js" } } } }));
    put(packageDir("@site/adapters"), "tape.js", `export default ${adapterSource("sitetape")};\n`);
    const registry = await createRegistry({ adapterModules: ["esm-only-adapter", "cjs-adapter", "@site/adapters/tape"], baseDir: dir, where });
    expect((await registry.adapterFor("sitetape:x")).name).toBe("sitetape");
    expect((await registry.adapterFor("esmonly:x")).name).toBe("esmonly");
    expect((await registry.adapterFor("cjsone:x")).name).toBe("cjsone");
  });

  it("says which module is not an adapter", async () => {
    await expect(createRegistry({ adapterModules: [notAnAdapter], where })).rejects.toThrow(
      /^mailroom\.toml: store\.adapter_modules: ".*not-an-adapter\.mjs" has no StoreAdapter as its default export$/,
    );
    await expect(createRegistry({ adapterModules: ["@mailroom/no-such-adapter"], baseDir: dir, where })).rejects.toThrow(
      /store\.adapter_modules: cannot load "@mailroom\/no-such-adapter"/,
    );
  });
});

describe("openStore", () => {
  it("opens the configured store with its options, through an adapter module", async () => {
    const file = writeFile(
      dir,
      "tape.toml",
      `hostname = "localhost"\n[store]\nurl = "tape:abc"\nreel = "r1"\nadapter_modules = ["./tape-adapter.mjs"]\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`,
    );
    const { store, adapter } = await openStore(loadConfig({ file, env: {} }));
    expect(adapter.name).toBe("tape");
    expect(store.kind).toBe("tape");
    await store.directory.addDomain("example.test");
    expect(await store.directory.listDomains()).toEqual(["example.test"]);
    await store.close();
  });

  it("rejects adapter options the adapter does not declare, naming the key", async () => {
    const file = writeFile(
      dir,
      "typo.toml",
      `hostname = "localhost"\n[store]\nurl = "maildir:./m"\nfsycn = false\n[smtp]\nsubmissions = []\n[pop3]\npop3s = []\n`,
    );
    await expect(openStore(loadConfig({ file, env: {} }))).rejects.toThrow(
      `${file}: store.fsycn: unknown key for the maildir store (did you mean store.fsync?); it knows fsync, hostname`,
    );
  });
});
