#!/usr/bin/env node
// Stock @hocuspocus/server, as the second benchmark baseline.
//
// Usage: node hocuspocus.mjs [--port N] [--host H] [--exit-on-stdin-eof]
//        (env PORT / HOST work too; defaults 1234 / 127.0.0.1)
//        --port 0 picks a free port. Prints exactly `listening <port>` on
//        stdout once it accepts connections, so a harness can wait for it.
//        --exit-on-stdin-eof: exit when stdin closes, so a harness that
//        spawns it with a piped stdin never leaks a server if it dies.
//
// The same conventions as refserver.mjs. The server is `new Server(...)` from
// @hocuspocus/server with no extensions and no hooks: no persistence, no
// authentication (any token is accepted), documents in memory only. Only
// `quiet` (its start screen would go to stdout) and `stopOnSignals` (we handle
// the signals ourselves, to exit without waiting for documents to unload) are
// changed. Everything else keeps its default, notably:
// - `debounce: 2000` / `maxDebounce: 10000`: they only delay the
//   onStoreDocument hook (a no-op here), never the relaying of updates, which
//   happens synchronously when an update is applied;
// - `timeout: 30000`: ping interval per connection;
// - `unloadImmediately: true`: a document is dropped from memory once its last
//   connection closes.
//
// Wire protocol (not y-websocket's): every message starts with the document
// name (varString), then the y-protocols message type; a connection must send
// an Auth/Token message before anything else of that document is processed.
// See bench.mjs --protocol hocuspocus.

import { Server } from '@hocuspocus/server'

function arg (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const host = arg('--host', process.env.HOST || '127.0.0.1')
const port = Number(arg('--port', process.env.PORT || '1234'))

const server = new Server({ port, address: host, quiet: true, stopOnSignals: false })

await server.listen()
process.stdout.write(`listening ${server.address.port}\n`)

function stop () {
  // Like refserver.mjs: exit hard rather than wait for per-connection pings
  // and document unloading.
  for (const ws of server.webSocketServer.clients) ws.terminate()
  server.httpServer.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
if (process.argv.includes('--exit-on-stdin-eof')) {
  process.stdin.on('end', stop)
  process.stdin.on('error', stop)
  process.stdin.resume()
}
