#!/usr/bin/env node
// Reference y-websocket server, for validating tests and as the benchmark
// baseline.
//
// Usage: node refserver.mjs [--port N] [--host H] [--exit-on-stdin-eof]
//        (env PORT / HOST work too; defaults 1234 / 127.0.0.1)
//        --port 0 picks a free port. Prints exactly `listening <port>` on
//        stdout once it accepts connections, so a harness can wait for it.
//        --exit-on-stdin-eof: exit when stdin closes, so a harness that
//        spawns it with a piped stdin never leaks a server if it dies.
//
// This is the stock `y-websocket` 2.x server (`bin/server.cjs`) with two
// harness conveniences: a machine-readable readiness line (the stock bin prints
// "running at 'host' on port N" and cannot report an OS-chosen port) and
// prompt exits (SIGTERM/SIGINT, optionally stdin EOF). The request handling
// is the very same `setupWSConnection` from y-websocket's `bin/utils.cjs`,
// loaded together with the same `ws` copy the stock bin resolves, so behaviour
// and performance match `npx y-websocket`.
//
// Room name = request path without the leading slash and query string, so
// `ws://127.0.0.1:PORT/ws/<room>?token=x` works too (room "ws/<room>", token
// ignored): clients can use the same URL shape as against duet-server.
//
// Persistence is off unless YPERSISTENCE=<dir> is set (that path needs the
// optional `y-leveldb` dependency, whose native leveldown build we do not
// rely on). Documents live in memory and are never evicted.

import http from 'node:http'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const utilsPath = require.resolve('y-websocket/bin/utils')
// Resolve `ws` from y-websocket's own directory: that is the copy the stock
// bin uses (y-websocket 2.x pins ws ^6 as an optional dependency).
const requireFromYws = createRequire(utilsPath)
const WebSocket = requireFromYws('ws')
const { setupWSConnection } = require(utilsPath)

function arg (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const host = arg('--host', process.env.HOST || '127.0.0.1')
const port = Number(arg('--port', process.env.PORT || '1234'))

const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' })
  res.end('okay')
})

server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, (ws) => {
    wss.emit('connection', ws, request)
  })
})

server.listen(port, host, () => {
  process.stdout.write(`listening ${server.address().port}\n`)
})

function stop () {
  // The stock server keeps 30 s ping intervals per connection; exit hard
  // rather than wait for them.
  for (const ws of wss.clients) ws.terminate()
  server.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
if (process.argv.includes('--exit-on-stdin-eof')) {
  process.stdin.on('end', stop)
  process.stdin.on('error', stop)
  process.stdin.resume()
}
