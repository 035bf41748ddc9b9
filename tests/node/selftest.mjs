// Self-test of the Node tooling against the reference y-websocket server.
// Run: node --test selftest.mjs   (or: npm test)
//
// It checks that client.mjs behaves as the Rust tests expect (convergence with
// non-ASCII text, awareness, offline edits, rejected connections, clean exit)
// and that bench.mjs completes a tiny run with no loss. duet-server is not
// involved: this validates the tools, so a failure in the Rust tests points at
// the server.

import { test, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import http from 'node:http'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import { WebSocketServer } from 'ws'

const dir = path.dirname(fileURLToPath(import.meta.url))

/** Spawn a node script and resolve once a stdout line matches `re`. */
function startServer () {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(dir, 'refserver.mjs'), '--port', '0', '--exit-on-stdin-eof'], {
      stdio: ['pipe', 'pipe', 'inherit']
    })
    const rl = readline.createInterface({ input: child.stdout })
    rl.on('line', (line) => {
      const m = /^listening (\d+)$/.exec(line)
      if (m) resolve({ child, port: Number(m[1]) })
    })
    child.on('exit', (code) => reject(new Error(`refserver exited ${code}`)))
  })
}

const liveClients = new Set()

/** A client.mjs process with a promise-based call() keyed by id. */
class Client {
  constructor () {
    this.child = spawn(process.execPath, [path.join(dir, 'client.mjs')], { stdio: ['pipe', 'pipe', 'inherit'] })
    liveClients.add(this.child)
    this.child.on('exit', () => liveClients.delete(this.child))
    this.nextId = 1
    this.pending = new Map()
    this.events = []
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)))
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const msg = JSON.parse(line) // any non-JSON on stdout is a bug: let it throw
      if (msg.event) { this.events.push(msg); return }
      const p = this.pending.get(msg.id)
      if (p) { this.pending.delete(msg.id); p(msg) }
    })
  }

  call (cmd) {
    const id = this.nextId++
    return new Promise((resolve) => {
      this.pending.set(id, resolve)
      this.child.stdin.write(JSON.stringify({ id, ...cmd }) + '\n')
    })
  }

  async ok (cmd) {
    const r = await this.call(cmd)
    assert.equal(r.ok, true, `${cmd.cmd} failed: ${JSON.stringify(r)}`)
    return r
  }

  async quit () {
    await this.call({ cmd: 'quit' })
    return this.exited
  }
}

let server
let base
before(async () => {
  server = await startServer()
  // Same URL shape as duet-server (base ends in /ws, token in the query): the
  // reference server treats "ws/<room>" as the room name and ignores the token.
  base = `ws://127.0.0.1:${server.port}/ws`
})
// A failed assertion skips a test's quit() calls: kill what is left so the
// runner never waits on stray processes.
afterEach(() => { for (const c of liveClients) c.kill('SIGKILL') })
after(() => { server.child.stdin.end() })

let roomSeq = 0
const room = () => `selftest-${process.pid}-${roomSeq++}`

test('two clients typing concurrently with emoji and CJK converge', async () => {
  const r = room()
  const a = new Client()
  const b = new Client()
  await a.ok({ cmd: 'connect', url: base, room: r, token: 't' })
  // One client creates the file and the other syncs it before both type:
  // concurrent creation of the same map key would drop one Y.Text.
  await a.ok({ cmd: 'insert', file: 'main.py', index: 0, text: '# start\n' })
  await b.ok({ cmd: 'connect', url: base, room: r, token: 't' })
  await b.ok({ cmd: 'waitText', file: 'main.py', text: '# start\n', timeoutMs: 5000 })

  const s = 'héllo 🎉 世界\n'
  await Promise.all([
    a.ok({ cmd: 'type', file: 'main.py', text: s.repeat(3), delayMs: 2, at: 'random' }),
    b.ok({ cmd: 'type', file: 'main.py', text: s.repeat(3), delayMs: 2, at: 'end' })
  ])
  // Each side may still be missing the other's last keystrokes: poll until
  // both hold the same, complete text.
  const expectedLen = [...'# start\n'].length + 6 * [...s].length
  let ta, tb
  for (let i = 0; i < 250; i++) {
    ta = (await a.ok({ cmd: 'text', file: 'main.py' })).text
    tb = (await b.ok({ cmd: 'text', file: 'main.py' })).text
    if (ta === tb && [...ta].length === expectedLen) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  assert.equal(ta, tb)
  // Every code point typed is there, and no surrogate pair got split.
  assert.equal([...ta].length, expectedLen)
  assert.equal(ta.isWellFormed(), true, JSON.stringify(ta))
  const count = (ch) => ta.split(ch).length - 1
  assert.equal(count('🎉'), 6)
  assert.equal(count('世'), 6)
  assert.equal(count('界'), 6)
  assert.equal(count('é'), 6)
  assert.equal(count('\ufffd'), 0)
  assert.deepEqual((await a.ok({ cmd: 'files' })).files, { 'main.py': ta })
  assert.equal(await a.quit(), 0)
  assert.equal(await b.quit(), 0)
})

test('awareness: states are visible to peers and removed on leave', async () => {
  const r = room()
  const a = new Client()
  const b = new Client()
  await a.ok({ cmd: 'connect', url: base, room: r })
  await b.ok({ cmd: 'connect', url: base, room: r })
  const st = { user: { name: 'ann', color: '#f00' }, cursor: { file: 'main.py', anchor: 3, head: 3 } }
  await a.ok({ cmd: 'awareness', state: st })
  await b.ok({ cmd: 'waitPeers', count: 1, timeoutMs: 5000 })
  const waitAnn = async () => {
    for (let i = 0; i < 100; i++) {
      const { peers } = await b.ok({ cmd: 'peers' })
      if (peers[0] && peers[0].state.user) return peers
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    throw new Error('ann never appeared')
  }
  const peers = await waitAnn()
  assert.deepEqual(peers[0].state, st)
  assert.equal(await a.quit(), 0)
  await b.ok({ cmd: 'waitPeers', count: 0, timeoutMs: 5000 })
  assert.equal(await b.quit(), 0)
})

test('offline edits merge after reconnect', async () => {
  const r = room()
  const a = new Client()
  const b = new Client()
  await a.ok({ cmd: 'connect', url: base, room: r })
  await a.ok({ cmd: 'insert', file: 'main.py', index: 0, text: 'base\n' })
  await b.ok({ cmd: 'connect', url: base, room: r })
  await b.ok({ cmd: 'waitText', file: 'main.py', text: 'base\n' })
  await b.ok({ cmd: 'disconnect' })
  await b.ok({ cmd: 'insert', file: 'main.py', index: 0, text: 'offline 🎉 ' })
  await a.ok({ cmd: 'insert', file: 'main.py', index: 5, text: 'online 世界\n' })
  const st = await b.ok({ cmd: 'status' })
  assert.equal(st.connected, false)
  await b.ok({ cmd: 'reconnect' })
  const want = 'offline 🎉 base\nonline 世界\n'
  await a.ok({ cmd: 'waitText', file: 'main.py', text: want })
  await b.ok({ cmd: 'waitText', file: 'main.py', text: want })
  assert.ok(b.events.some((e) => e.event === 'status' && e.status === 'disconnected'))
  assert.equal(await a.quit(), 0)
  assert.equal(await b.quit(), 0)
})

test('waitText times out with the actual text', async () => {
  const a = new Client()
  await a.ok({ cmd: 'connect', url: base, room: room() })
  const r = await a.call({ cmd: 'waitText', file: 'nope.py', text: 'x', timeoutMs: 100 })
  assert.equal(r.ok, false)
  assert.equal(r.error, 'timeout')
  assert.equal(r.text, null)
  assert.equal(await a.quit(), 0)
})

test('rejections: HTTP refusal and close codes are reported, no retry storm', async () => {
  // A stand-in for duet-server's auth: 401 on upgrade for token=bad, accept
  // then close 4401 for token=close.
  let upgrades = 0
  const wss = new WebSocketServer({ noServer: true })
  const srv = http.createServer()
  srv.on('upgrade', (req, socket, head) => {
    upgrades++
    if (req.url.includes('token=bad')) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => ws.close(4401, 'invalid token'))
  })
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const url = `ws://127.0.0.1:${srv.address().port}/ws`

  const a = new Client()
  const r1 = await a.call({ cmd: 'connect', url, room: 'r', token: 'bad' })
  assert.equal(r1.ok, false)
  assert.equal(r1.httpStatus, 401)
  assert.equal(r1.closeCode, 1006)

  const r2 = await a.call({ cmd: 'connect', url, room: 'r', token: 'close', expectClose: true })
  assert.equal(r2.ok, true)
  assert.equal(r2.closeCode, 4401)
  assert.equal(r2.closeReason, 'invalid token')
  assert.equal(r2.synced, false)

  const r3 = await a.call({ cmd: 'connect', url, room: 'r', token: 'close' })
  assert.equal(r3.ok, false)
  assert.equal(r3.closeCode, 4401)

  await new Promise((resolve) => setTimeout(resolve, 500))
  assert.equal(upgrades, 3, 'the client must stop reconnecting after a failed connect')
  assert.ok(a.events.some((e) => e.event === 'close' && e.code === 4401 && e.reason === 'invalid token'))
  assert.equal(await a.quit(), 0)
  srv.close()
})

test('exits cleanly on stdin EOF, letting in-flight commands reply', async () => {
  const a = new Client()
  const replies = []
  a.child.stdout.on('data', (d) => replies.push(String(d)))
  const r = room()
  a.child.stdin.write(JSON.stringify({ id: 1, cmd: 'connect', url: base, room: r }) + '\n')
  a.child.stdin.write(JSON.stringify({ id: 2, cmd: 'type', file: 'f', text: 'abc', delayMs: 5 }) + '\n')
  a.child.stdin.end()
  assert.equal(await a.exited, 0)
  const all = replies.join('')
  assert.match(all, /"id":1,"ok":true/)
  assert.match(all, /"id":2,"ok":true/)
})

test('bench.mjs: tiny run against the reference server loses nothing', async () => {
  const child = spawn(process.execPath, [
    path.join(dir, 'bench.mjs'), '--url', `ws://127.0.0.1:${server.port}`, '--room-prefix', `selftest-bench-${process.pid}-`,
    '--rooms', '2', '--peers', '3', '--rate', '10', '--duration', '1', '--warmup', '0.5',
    '--pid', String(server.child.pid), '--json', '--awareness'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => { stdout += d })
  child.stderr.on('data', (d) => { stderr += d })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  assert.equal(code, 0, stderr)
  const lines = stdout.trim().split('\n')
  assert.equal(lines.length, 1, 'exactly one JSON line on stdout with --json')
  const res = JSON.parse(lines[0])
  assert.equal(res.lostEdits, 0)
  assert.equal(res.divergedRooms, 0)
  assert.equal(res.peersConnected, 6)
  assert.ok(res.deliveriesMeasured > 0)
  assert.ok(res.server.rssPeakMB > 0)
})
