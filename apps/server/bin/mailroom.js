#!/usr/bin/env node
import { main } from "../dist/cli/main.js";

// Exit explicitly: a store driver that keeps a timer alive must not keep a finished command running.
process.exit(await main(process.argv.slice(2)));
