import { describe, expect, it } from "vitest";
import { authContinue, authStart } from "../src/auth.js";

const b64 = (s: string) => Buffer.from(s, "utf8").toString("base64");

describe("AUTH exchange (pure)", () => {
  it("PLAIN with and without an initial response", () => {
    expect(authStart("PLAIN", b64("\0a@b.test\0pw"))).toEqual({ kind: "verify", login: "a@b.test", password: "pw" });
    expect(authStart("PLAIN", null)).toEqual({ kind: "challenge", challenge: "", mechanism: "PLAIN", login: null });
    expect(authContinue("PLAIN", null, b64("a@b.test\0a@b.test\0pw"))).toEqual({ kind: "verify", login: "a@b.test", password: "pw" });
  });

  it("PLAIN refuses another authorisation identity, empty parts and junk", () => {
    expect(authStart("PLAIN", b64("admin@b.test\0a@b.test\0pw"))).toEqual({ kind: "fail", why: "invalid" });
    expect(authStart("PLAIN", b64("\0\0pw"))).toEqual({ kind: "fail", why: "invalid" });
    expect(authStart("PLAIN", "=")).toEqual({ kind: "fail", why: "invalid" });
    expect(authStart("PLAIN", "abc")).toEqual({ kind: "fail", why: "decode" });
    expect(authStart("PLAIN", b64("\0a\0b").slice(0, -1) + "!")).toEqual({ kind: "fail", why: "decode" });
    expect(authStart("PLAIN", Buffer.from([0, 0xff, 0, 0x41]).toString("base64"))).toEqual({ kind: "fail", why: "decode" });
  });

  it("LOGIN asks for user name and password; * cancels at any step", () => {
    const first = authStart("LOGIN", null);
    expect(first).toEqual({ kind: "challenge", challenge: "VXNlcm5hbWU6", mechanism: "LOGIN", login: null });
    const second = authContinue("LOGIN", null, b64("bob@b.test"));
    expect(second).toEqual({ kind: "challenge", challenge: "UGFzc3dvcmQ6", mechanism: "LOGIN", login: "bob@b.test" });
    expect(authContinue("LOGIN", "bob@b.test", b64("secret"))).toEqual({ kind: "verify", login: "bob@b.test", password: "secret" });
    expect(authStart("LOGIN", b64("bob@b.test"))).toEqual(second);
    expect(authContinue("LOGIN", null, "*")).toEqual({ kind: "fail", why: "cancelled" });
    expect(authContinue("LOGIN", "bob@b.test", " * ")).toEqual({ kind: "fail", why: "cancelled" });
  });
});
