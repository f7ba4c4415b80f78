#!/usr/bin/env node
// Every Maildir delivery ends in fsyncs, which run on libuv's thread pool (4 threads by default): with
// many concurrent SMTP sessions four threads queue up behind the disk. Node reads this variable when
// the pool starts, so it is set before anything else is loaded; an operator's own value wins.
process.env.UV_THREADPOOL_SIZE ??= "16";

const { main } = await import("../dist/cli/main.js");

// `mailroom user list | head -1`: a reader that goes away early is not an error worth a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (error) => {
    if (error && error.code === "EPIPE") process.exit(0);
    throw error;
  });
}

// Exit explicitly: a store driver that keeps a timer alive must not keep a finished command running.
process.exit(await main(process.argv.slice(2)));
