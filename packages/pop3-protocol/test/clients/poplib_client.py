"""Drives Python's poplib against the server under test and prints what it saw as JSON.

usage: poplib_client.py PORT USER PASSWORD MODE [--stls CAFILE | --ssl CAFILE]
MODE: "read" (STAT, UIDL, RETR every message, QUIT) or "delete" (DELE every message, QUIT)
"""
import base64
import json
import poplib
import ssl
import sys

port, user, password, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
tls = sys.argv[5] if len(sys.argv) > 5 else None
context = None
if tls:
    context = ssl.create_default_context(cafile=sys.argv[6])

if tls == "--ssl":
    client = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=10)
else:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    if tls == "--stls":
        client.stls(context)

out = {"welcome": client.getwelcome().decode(), "capa": sorted(client.capa().keys())}
client.user(user)
client.pass_(password)
count, size = client.stat()
out["stat"] = [count, size]
out["uidl"] = [line.decode() for line in client.uidl()[1]]
if mode == "read":
    messages = []
    for n in range(1, count + 1):
        _, lines, octets = client.retr(n)
        data = b"\r\n".join(lines) + b"\r\n"
        messages.append(base64.b64encode(data).decode())
    out["messages"] = messages
elif mode == "delete":
    for n in range(1, count + 1):
        client.dele(n)
out["quit"] = client.quit().decode()
print(json.dumps(out))
