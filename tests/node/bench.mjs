#!/usr/bin/env node
// Load generator for Yjs relay servers: duet-server and the reference
// y-websocket server (y-websocket protocol), and @hocuspocus/server (its
// protocol: --protocol hocuspocus).
//
// It speaks the wire protocol itself (yjs + y-protocols + lib0 + ws) instead of
// using WebsocketProvider: per-connection overhead stays minimal (no awareness
// timers, no reconnect logic, no BroadcastChannel) and is identical whichever
// server is measured, so differences in the figures are the server's.
//
// The two protocols carry the same y-protocols messages (sync step 1/2,
// update, awareness) and differ only in framing and handshake:
// - yws: one document per connection, chosen by the URL path
//   (<url>/<room>?token=T); a message is <type varUint><payload>.
// - hocuspocus: the URL names no document; every message in both directions is
//   <document name varString><type varUint><payload>, and a client first sends
//   Auth (type 2, sub-type Token=0, token varString); the server queues the
//   document's other messages until it has answered Auth/Authenticated.
//   Here every peer opens its own connection to <url> for one document, the
//   room. The server also acks every sync step 2/update with SyncStatus
//   (type 8), and echoes updates to their sender, as y-websocket does; those
//   frames are counted in msgs/s and otherwise ignored.
// Everything else (edits, latency measurement, loss and convergence checks)
// is the same code for both.
//
// Every peer keeps a real Y.Doc, so the server must really merge and relay
// Yjs updates correctly; the run also checks that nothing is lost and that all
// peers of a room converge to the same text.
//
// Latency: the sender notes process.hrtime.bigint() right before its local
// edit (the update is sent synchronously from the doc's update handler), and
// embeds a unique id «<peer>:<seq>» in the inserted text. Each other peer of
// the room looks for ids in the text items each remote update integrates into
// its doc, at the moment it is applied, and records now - sentAt. Sender and receivers live in this one
// process, so a single monotonic clock is used and no clock sync is needed.
// The generator's own event-loop delay is reported: if it is high, the
// generator, not the server, is the bottleneck. So is the whole machine's CPU
// use, to tell when other processes compete with the server and generator.
//
// One load can be split over several generator processes (rooms divided
// between them; a room stays in one process): with --sync-start each
// connects, prints `ready` and starts editing when its stdin gets a line, and
// --samples puts the raw latencies in the JSON for the caller to merge.
//
// Usage: node bench.mjs --url ws://127.0.0.1:1234 [options]   (see --help)

import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import fs from 'node:fs'
import os from 'node:os'
import { execSync } from 'node:child_process'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const HELP = `Usage: node bench.mjs --url URL [options]

  --url URL               base URL; a peer connects to URL/<room>[?token=T]
                          (duet-server: ws://127.0.0.1:PORT/ws;
                          reference: ws://127.0.0.1:PORT); with --protocol
                          hocuspocus to URL itself (room and token in-band)
  --protocol yws|hocuspocus
                          wire protocol (default yws; see the top of this file)
  --rooms-from FILE       JSON [{"room":"<id>","token":"..."}] (optionally
                          "tokens":["..",..] for one token per peer); without
                          it rooms are named bench-<i> (prefix: --room-prefix)
  --rooms R               rooms (default 10, or all rooms of --rooms-from)
  --peers P               peers per room (default 5)
  --rate E                edits per second per peer (default 10)
  --duration S            measured seconds (default 10)
  --warmup S              seconds of editing before measuring (default 2)
  --grace S               max seconds to wait for stragglers after the last
                          edit; undelivered edits then count as lost (default 5)
  --token T               token for every room without one (default none)
  --pid PID               server pid: sample /proc/PID RSS every 100 ms, CPU
  --label NAME            name carried into the output
  --pos end|random        where peers insert (default end)
  --edit-size N           characters per edit incl. the id (default 16)
  --awareness             also send an awareness (cursor) update per edit
  --connect-timeout S     per-peer connect+sync timeout (default 15)
  --connect-concurrency N parallel connection attempts (default 32)
  --room-prefix STR       room name prefix without --rooms-from (default bench-)
  --json                  print exactly one JSON line of results on stdout
                          (human summary goes to stderr)
  --samples               include every measured latency (ms) in the JSON, for
                          merging the results of several generator processes
  --sync-start            once connected print "ready" on stdout (before the
                          JSON line) and wait for a line on stdin before
                          editing (aligns several generator processes)

Exit status: 0 when every edit reached every other peer, all rooms converged
and there were no errors/disconnects; 2 otherwise; 1 on usage/setup errors.`

// ---------------------------------------------------------------------------
// Options

function parseArgs (argv) {
  const o = {
    url: null,
    protocol: 'yws',
    roomsFrom: null,
    rooms: null,
    peers: 5,
    rate: 10,
    duration: 10,
    warmup: 2,
    grace: 5,
    token: null,
    pid: null,
    label: '',
    pos: 'end',
    editSize: 16,
    awareness: false,
    connectTimeout: 15,
    connectConcurrency: 32,
    roomPrefix: 'bench-',
    json: false,
    samples: false,
    syncStart: false
  }
  const num = (name, v) => {
    const n = Number(v)
    if (!Number.isFinite(n)) usage(`${name} needs a number`)
    return n
  }
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`)
      return argv[++i]
    }
    switch (a) {
      case '--url': o.url = next(); break
      case '--protocol': o.protocol = next(); break
      case '--rooms-from': o.roomsFrom = next(); break
      case '--rooms': o.rooms = num(a, next()); break
      case '--peers': o.peers = num(a, next()); break
      case '--rate': o.rate = num(a, next()); break
      case '--duration': o.duration = num(a, next()); break
      case '--warmup': o.warmup = num(a, next()); break
      case '--grace': o.grace = num(a, next()); break
      case '--token': o.token = next(); break
      case '--pid': o.pid = num(a, next()); break
      case '--label': o.label = next(); break
      case '--pos': o.pos = next(); break
      case '--edit-size': o.editSize = num(a, next()); break
      case '--awareness': o.awareness = true; break
      case '--connect-timeout': o.connectTimeout = num(a, next()); break
      case '--connect-concurrency': o.connectConcurrency = num(a, next()); break
      case '--room-prefix': o.roomPrefix = next(); break
      case '--json': o.json = true; break
      case '--samples': o.samples = true; break
      case '--sync-start': o.syncStart = true; break
      case '-h': case '--help': process.stdout.write(HELP + '\n'); process.exit(0); break
      default: usage(`unknown option ${a}`)
    }
  }
  if (!o.url) usage('--url is required')
  if (o.protocol !== 'yws' && o.protocol !== 'hocuspocus') usage('--protocol must be yws or hocuspocus')
  if (o.pos !== 'end' && o.pos !== 'random') usage('--pos must be end or random')
  if (o.peers < 2) usage('--peers must be >= 2 (latency is measured between peers)')
  if (o.rate <= 0 || o.duration <= 0) usage('--rate and --duration must be > 0')
  return o
}

function usage (msg) {
  process.stderr.write(`bench.mjs: ${msg}\n\n${HELP}\n`)
  process.exit(1)
}

const opts = parseArgs(process.argv)
const log = (msg) => process.stderr.write(msg + '\n')
const out = (msg) => (opts.json ? process.stderr : process.stdout).write(msg + '\n')

function loadRooms () {
  if (opts.roomsFrom) {
    const list = JSON.parse(fs.readFileSync(opts.roomsFrom, 'utf8'))
    if (!Array.isArray(list) || list.length === 0) usage('--rooms-from must hold a non-empty JSON array')
    const n = opts.rooms ?? list.length
    if (n > list.length) usage(`--rooms ${n} but ${opts.roomsFrom} has only ${list.length}`)
    return list.slice(0, n).map((r) => ({
      name: String(r.room),
      token: r.token ?? opts.token,
      tokens: Array.isArray(r.tokens) ? r.tokens : null
    }))
  }
  const n = opts.rooms ?? 10
  return Array.from({ length: n }, (_, i) => ({ name: `${opts.roomPrefix}${i}`, token: opts.token, tokens: null }))
}

// ---------------------------------------------------------------------------
// Server process sampling (/proc), so memory/CPU figures come from the same
// run as the latency figures.

let clkTck = 100
try { clkTck = Number(execSync('getconf CLK_TCK', { encoding: 'utf8' }).trim()) || 100 } catch {}

function readStatusKb (pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const rss = /VmRSS:\s+(\d+)/.exec(s)
    const hwm = /VmHWM:\s+(\d+)/.exec(s)
    return { rss: rss ? Number(rss[1]) : null, hwm: hwm ? Number(hwm[1]) : null }
  } catch {
    return null
  }
}

function readCpuTicks (pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    // comm may contain spaces/parens: fields start after the last ')'.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
    return Number(f[11]) + Number(f[12]) // utime + stime (fields 14, 15)
  } catch {
    return null
  }
}

// Busy time of the whole machine (all cores) in ticks, from /proc/stat: user,
// nice, system and steal (time taken by the hypervisor). Interrupt time is
// left out: it is mostly the loopback traffic of this very benchmark, which
// the kernel may not charge to our processes.
function readMachineTicks () {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number)
    return f[0] + f[1] + f[2] + f[7]
  } catch {
    return null
  }
}

const serverStats = { rssStartKb: null, rssPeakKb: 0, hwmKb: null, rssEndKb: null, cpuTicks0: null, cpuTicks1: null }
let sampler = null
function startSampler () {
  if (opts.pid == null) return
  const first = readStatusKb(opts.pid)
  if (first === null) { log(`warning: cannot read /proc/${opts.pid}/status`); return }
  serverStats.rssStartKb = first.rss
  const sample = () => {
    const s = readStatusKb(opts.pid)
    if (s === null) return
    if (s.rss > serverStats.rssPeakKb) serverStats.rssPeakKb = s.rss
    serverStats.hwmKb = s.hwm
    serverStats.rssEndKb = s.rss
  }
  sample()
  sampler = setInterval(sample, 100)
}

// ---------------------------------------------------------------------------
// Run state

const REMOTE = Symbol('remote') // transaction origin for updates from the server
const messageSync = 0
const messageAwareness = 1
const messageAuth = 2
// hocuspocus only: SyncReply is a sync message that asks for no step 1 back;
// Close is the server dropping the document from the connection.
const messageSyncReply = 4
const messageClose = 7
const authToken = 0
const authPermissionDenied = 1
const hocuspocus = opts.protocol === 'hocuspocus'

const stats = {
  editsSent: 0,
  editsSentMeasured: 0,
  msgsReceived: 0,
  msgsReceivedMeasured: 0,
  msgTypesMeasured: {}, // message type -> count, measured phase
  bytesReceivedMeasured: 0,
  samples: [], // latency ms of measured deliveries
  deliveries: 0, // all deliveries, incl. warmup and grace
  errors: 0,
  disconnects: 0,
  unknownIds: 0,
  errorLog: []
}
let phase = 'connect' // connect -> warmup -> measure -> grace -> done
/** key "<gid>:<seq>" -> { t: bigint, pending: number, measured: boolean } */
const inFlight = new Map()
const ID_RE = /«(\d+):(\d+)»/g

function noteError (msg) {
  stats.errors++
  if (stats.errorLog.length < 20) stats.errorLog.push(msg)
}

function peerUrl (room, token) {
  if (hocuspocus) return opts.url // document and token go in-band
  let base = opts.url
  while (base.endsWith('/')) base = base.slice(0, -1) // as WebsocketProvider does
  return `${base}/${room}` + (token != null ? `?token=${encodeURIComponent(token)}` : '')
}

class Peer {
  constructor (room, roomIdx, localIdx, gid) {
    this.room = room
    this.roomIdx = roomIdx
    this.localIdx = localIdx
    this.gid = gid
    this.doc = new Y.Doc()
    this.files = this.doc.getMap('files')
    this.text = null
    this.ws = null
    this.synced = false
    this.closedByUs = false
    this.alive = false
    this.seq = 0
    this.awarenessClock = 0
    this.roomPeers = null // filled once all peers exist

    // Called once per local edit with the update to send.
    this.sendUpdate = (update) => {
      if (!this.alive) return
      const enc = this.encoder(messageSync)
      syncProtocol.writeUpdate(enc, update)
      this.ws.send(encoding.toUint8Array(enc))
    }
  }

  /** A new outgoing message of `type`, framed for the protocol. */
  encoder (type) {
    const enc = encoding.createEncoder()
    if (hocuspocus) encoding.writeVarString(enc, this.room.name)
    encoding.writeVarUint(enc, type)
    return enc
  }

  /**
   * Run a local change and send the resulting update, as the provider's
   * 'update' handler would. The handler is attached only around local
   * changes: while a doc has an 'update' listener, Yjs also re-encodes every
   * applied remote update just to emit the event, a cost real to the
   * provider but pure overhead for a load generator.
   */
  localChange (fn) {
    this.doc.on('update', this.sendUpdate)
    try {
      fn()
    } finally {
      this.doc.off('update', this.sendUpdate)
    }
  }

  token () {
    return this.room.tokens ? this.room.tokens[this.localIdx % this.room.tokens.length] : this.room.token
  }

  connect (timeoutMs) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(peerUrl(this.room.name, this.token()), { perMessageDeflate: false })
      this.ws = ws
      let settled = false
      const timer = setTimeout(() => fail(new Error('connect/sync timeout')), timeoutMs)
      const fail = (err) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        ws.terminate()
        reject(err)
      }
      ws.on('open', () => {
        this.alive = true
        if (hocuspocus) {
          // As HocuspocusProvider does: the token, then step 1 right away
          // (the server holds it until authentication passed).
          const auth = this.encoder(messageAuth)
          encoding.writeVarUint(auth, authToken)
          encoding.writeVarString(auth, this.token() ?? '')
          ws.send(encoding.toUint8Array(auth))
        }
        const enc = this.encoder(messageSync)
        syncProtocol.writeSyncStep1(enc, this.doc)
        ws.send(encoding.toUint8Array(enc))
      })
      ws.on('message', (data) => {
        this.onMessage(data)
        if (this.synced && !settled) {
          settled = true
          clearTimeout(timer)
          resolve()
        }
      })
      ws.on('unexpected-response', (_req, res) => fail(new Error(`HTTP ${res.statusCode} on upgrade`)))
      ws.on('error', (err) => {
        if (!this.synced) return fail(err)
        noteError(`peer ${this.gid}: ${err.message}`)
      })
      ws.on('close', (code, reason) => {
        this.alive = false
        if (!this.synced) return fail(new Error(`closed before sync: ${code} ${reason}`))
        if (!this.closedByUs) {
          stats.disconnects++
          noteError(`peer ${this.gid} (room ${this.room.name}) closed by server: ${code} ${reason}`)
        }
      })
    })
  }

  onMessage (data) {
    stats.msgsReceived++
    if (phase === 'measure') {
      stats.msgsReceivedMeasured++
      stats.bytesReceivedMeasured += data.length
    }
    try {
      const dec = decoding.createDecoder(data)
      if (hocuspocus) {
        const name = decoding.readVarString(dec)
        if (name !== this.room.name) throw new Error(`message for document ${name}`)
      }
      const type = decoding.readVarUint(dec)
      if (phase === 'measure') stats.msgTypesMeasured[type] = (stats.msgTypesMeasured[type] || 0) + 1
      if (type === messageSync || (hocuspocus && type === messageSyncReply)) {
        const enc = this.encoder(messageSync)
        const empty = encoding.length(enc)
        // Answers the server's step 1 with our step 2; applies step 2/updates.
        const st = syncProtocol.readSyncMessage(dec, enc, this.doc, REMOTE)
        if (encoding.length(enc) > empty) this.ws.send(encoding.toUint8Array(enc))
        if (st === syncProtocol.messageYjsSyncStep2) this.synced = true
      } else if (type === messageAuth) {
        // y-websocket: permission denied is the only auth message.
        // hocuspocus: Authenticated (2) is expected once, before the sync.
        const sub = hocuspocus ? decoding.readVarUint(dec) : authPermissionDenied
        if (sub === authPermissionDenied) noteError(`peer ${this.gid}: auth message (permission denied)`)
      } else if (hocuspocus && type === messageClose) {
        noteError(`peer ${this.gid}: server closed the document: ${decoding.readVarString(dec)}`)
      }
      // Anything else is only counted: awareness (1) and query-awareness (3),
      // since the bench keeps no awareness state so receiving it costs as
      // little as possible; with hocuspocus also SyncStatus acks (8) and
      // stateless messages (5, 6).
    } catch (err) {
      noteError(`peer ${this.gid}: bad message: ${err.message}`)
    }
  }

  bindText () {
    const t = this.files.get('main.py')
    if (!(t instanceof Y.Text)) return false
    this.text = t
    // Find the edits a remote update just integrated. Not via YTextEvent.delta
    // (what an editor binding would use): computing it walks the whole item
    // list, O(document length) per update, which made the generator, not the
    // server, the bottleneck within seconds. Instead look only at the structs
    // that are new in this transaction (the clock ranges between the
    // transaction's before and after state vectors); 'afterTransaction' runs
    // synchronously inside applyUpdate, i.e. when the edit is applied, and
    // before Yjs merges adjacent items.
    const store = this.doc.store
    this.doc.on('afterTransaction', (tr) => {
      if (tr.local) return
      let now = null
      tr.afterState.forEach((afterClock, client) => {
        const beforeClock = tr.beforeState.get(client) || 0
        if (afterClock === beforeClock) return
        const structs = store.clients.get(client)
        for (let i = Y.findIndexSS(structs, beforeClock); i < structs.length; i++) {
          const item = structs[i]
          if (item.id.clock >= afterClock) break
          if (!(item instanceof Y.Item) || !(item.content instanceof Y.ContentString)) continue
          // The first struct may begin before this update (not yet split).
          const str = item.content.str.slice(Math.max(0, beforeClock - item.id.clock))
          ID_RE.lastIndex = 0
          let m
          while ((m = ID_RE.exec(str)) !== null) {
            if (now === null) now = process.hrtime.bigint()
            this.received(m[1] + ':' + m[2], now)
          }
        }
      })
    })
    return true
  }

  received (key, now) {
    const rec = inFlight.get(key)
    if (rec === undefined) {
      // Either our own edit echoed in a merged update (cannot happen with
      // transaction.local filtered) or an edit from an earlier run in a
      // reused room, delivered in the initial sync. Not an error.
      stats.unknownIds++
      return
    }
    stats.deliveries++
    if (rec.measured) stats.samples.push(Number(now - rec.t) / 1e6)
    if (--rec.pending === 0) inFlight.delete(key)
  }

  edit () {
    if (!this.alive) return
    const key = `${this.gid}:${this.seq++}`
    const id = `«${key}»`
    const body = id + 'x'.repeat(Math.max(0, opts.editSize - id.length))
    const len = this.text.length
    // Random positions must avoid splitting another edit's id, or a receiver
    // could not find it; inserting right before a « keeps ids whole.
    let index = len
    if (opts.pos === 'random' && len > 0) {
      const s = this.text.toString()
      const j = s.indexOf('«', Math.floor(Math.random() * len))
      index = j < 0 ? len : j
    }
    let others = 0
    for (const p of this.roomPeers) if (p !== this && p.alive) others++
    const measured = phase === 'measure'
    inFlight.set(key, { t: process.hrtime.bigint(), pending: others, measured })
    this.localChange(() => this.text.insert(index, body)) // sends synchronously
    stats.editsSent++
    if (measured) stats.editsSentMeasured++
    if (opts.awareness) this.sendAwareness(index + body.length)
  }

  sendAwareness (cursor) {
    // Hand-encoded awareness update (one client): what a provider sends when
    // an editor moves its cursor.
    const state = JSON.stringify({ user: { name: `p${this.gid}` }, cursor: { file: 'main.py', anchor: cursor, head: cursor } })
    const inner = encoding.createEncoder()
    encoding.writeVarUint(inner, 1)
    encoding.writeVarUint(inner, this.doc.clientID)
    encoding.writeVarUint(inner, ++this.awarenessClock)
    encoding.writeVarString(inner, state)
    const enc = this.encoder(messageAwareness)
    encoding.writeVarUint8Array(enc, encoding.toUint8Array(inner))
    this.ws.send(encoding.toUint8Array(enc))
  }

  close () {
    this.closedByUs = true
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, 'bench done')
  }
}

// ---------------------------------------------------------------------------
// Phases

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function runLimited (items, limit, fn) {
  let next = 0
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]
      await fn(item)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

async function waitUntil (check, timeoutMs, stepMs = 20) {
  const end = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > end) return false
    await sleep(stepMs)
  }
  return true
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[i]
}

const round = (x, d = 2) => (x == null ? null : Math.round(x * 10 ** d) / 10 ** d)

async function main () {
  const rooms = loadRooms()
  const totalPeers = rooms.length * opts.peers
  // Hard stop so a wedged server can never hang the caller.
  const budgetS = opts.connectTimeout * Math.ceil(totalPeers / opts.connectConcurrency) + opts.warmup + opts.duration + opts.grace + 30
  setTimeout(() => { log(`bench.mjs: overall time budget (${budgetS}s) exceeded, aborting`); process.exit(2) }, budgetS * 1000).unref()

  startSampler()
  // The histogram records the full interval between its timer ticks, so the
  // resolution is subtracted from the reported figures below.
  const LOOP_RES_MS = 5
  const loopDelay = monitorEventLoopDelay({ resolution: LOOP_RES_MS })

  // Build peers. Peer 0 of each room connects first and creates the shared
  // Y.Text if the room lacks it; the others connect after, so everybody binds
  // to the same Y.Text (concurrent creation would be last-writer-wins and
  // silently drop edits).
  const peersByRoom = rooms.map((room, r) =>
    Array.from({ length: opts.peers }, (_, j) => new Peer(room, r, j, r * opts.peers + j)))
  const all = peersByRoom.flat()
  for (const group of peersByRoom) for (const p of group) p.roomPeers = group

  const t0 = Date.now()
  const connectTimeoutMs = opts.connectTimeout * 1000
  let connectFailures = 0
  const tryConnect = async (p) => {
    try {
      await p.connect(connectTimeoutMs)
    } catch (err) {
      connectFailures++
      noteError(`peer ${p.gid} (room ${p.room.name}) connect failed: ${err.message}`)
    }
  }
  await runLimited(peersByRoom.map((g) => g[0]), opts.connectConcurrency, async (p) => {
    await tryConnect(p)
    if (p.alive && !(p.files.get('main.py') instanceof Y.Text)) p.localChange(() => p.files.set('main.py', new Y.Text()))
  })
  await runLimited(peersByRoom.flatMap((g) => g.slice(1)), opts.connectConcurrency, tryConnect)
  const bound = await waitUntil(() => all.every((p) => !p.alive || p.text !== null || p.bindText()), connectTimeoutMs)
  if (!bound) noteError('some peers never received the shared Y.Text main.py')
  const connectMs = Date.now() - t0
  const live = all.filter((p) => p.alive && p.text !== null)
  log(`connected ${live.length}/${totalPeers} peers in ${rooms.length} rooms in ${connectMs} ms`)
  if (live.length === 0) {
    for (const e of stats.errorLog.slice(0, 5)) log(`error: ${e}`)
    log('no peer connected; aborting')
    process.exit(1)
  }

  if (opts.syncStart) {
    process.stdout.write('ready\n')
    await new Promise((resolve) => {
      process.stdin.once('data', resolve)
      process.stdin.once('end', resolve)
    })
    process.stdin.pause()
  }

  // Editing: each peer on its own absolute schedule with a random phase, so
  // load is spread evenly and timer drift does not lower the real rate.
  const periodMs = 1000 / opts.rate
  let sending = true
  const tStart = performance.now()
  for (const p of live) {
    let due = tStart + Math.random() * periodMs
    const tick = () => {
      if (!sending) return
      p.edit()
      due += periodMs
      // If we fell behind (overloaded generator), skip missed slots rather
      // than bursting; the achieved rate is reported.
      const now = performance.now()
      if (due < now - periodMs) due = now
      setTimeout(tick, Math.max(0, due - now))
    }
    setTimeout(tick, due - tStart)
  }

  phase = 'warmup'
  await sleep(opts.warmup * 1000)

  phase = 'measure'
  loopDelay.enable()
  const cpu0 = process.cpuUsage()
  const wall0 = process.hrtime.bigint()
  serverStats.cpuTicks0 = opts.pid != null ? readCpuTicks(opts.pid) : null
  const machineTicks0 = readMachineTicks()
  await sleep(opts.duration * 1000)
  const wallS = Number(process.hrtime.bigint() - wall0) / 1e9
  const cpu = process.cpuUsage(cpu0)
  serverStats.cpuTicks1 = opts.pid != null ? readCpuTicks(opts.pid) : null
  const machineTicks1 = readMachineTicks()
  loopDelay.disable()

  // Stop editing; give in-flight edits up to --grace seconds to arrive.
  phase = 'grace'
  sending = false
  const tGrace = Date.now()
  await waitUntil(() => inFlight.size === 0, opts.grace * 1000)
  const graceMs = Date.now() - tGrace
  phase = 'done'

  let lostEdits = 0
  let lostDeliveries = 0
  for (const rec of inFlight.values()) {
    if (rec.pending > 0) { lostEdits++; lostDeliveries += rec.pending }
  }

  // Convergence: every live peer of a room must hold the same text.
  let divergedRooms = 0
  for (const group of peersByRoom) {
    const texts = group.filter((p) => p.alive && p.text !== null).map((p) => p.text.toString())
    if (texts.some((t) => t !== texts[0])) divergedRooms++
  }

  for (const p of all) p.close()
  await sleep(200)
  if (sampler) clearInterval(sampler)

  const sorted = Float64Array.from(stats.samples).sort()
  const mean = sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null
  const mb = (kb) => (kb == null ? null : round(kb / 1024, 1))
  const result = {
    label: opts.label,
    url: opts.url,
    protocol: opts.protocol,
    rooms: rooms.length,
    peersPerRoom: opts.peers,
    peersConnected: live.length,
    ratePerPeer: opts.rate,
    durationS: opts.duration,
    warmupS: opts.warmup,
    pos: opts.pos,
    editSize: opts.editSize,
    awareness: opts.awareness,
    connectMs,
    editsSent: stats.editsSent,
    editsSentMeasured: stats.editsSentMeasured,
    editsPerSec: round(stats.editsSentMeasured / wallS, 1),
    editsPerSecTarget: live.length * opts.rate,
    deliveriesMeasured: sorted.length,
    deliveriesPerSec: round(sorted.length / wallS, 1),
    msgsReceivedMeasured: stats.msgsReceivedMeasured,
    msgsPerSec: round(stats.msgsReceivedMeasured / wallS, 1),
    msgTypesMeasured: stats.msgTypesMeasured,
    bytesPerSec: Math.round(stats.bytesReceivedMeasured / wallS),
    latencyMs: {
      p50: round(percentile(sorted, 50), 3),
      p90: round(percentile(sorted, 90), 3),
      p99: round(percentile(sorted, 99), 3),
      p999: round(percentile(sorted, 99.9), 3),
      max: round(sorted.length ? sorted[sorted.length - 1] : null, 3),
      mean: round(mean, 3)
    },
    lostEdits,
    lostDeliveries,
    divergedRooms,
    graceUsedMs: graceMs,
    connectFailures,
    disconnects: stats.disconnects,
    errors: stats.errors,
    errorSamples: stats.errorLog,
    unknownIds: stats.unknownIds,
    server: opts.pid == null
      ? null
      : {
          pid: opts.pid,
          rssStartMB: mb(serverStats.rssStartKb),
          rssPeakMB: mb(serverStats.rssPeakKb),
          rssEndMB: mb(serverStats.rssEndKb),
          hwmMB: mb(serverStats.hwmKb),
          cpuPct: serverStats.cpuTicks0 != null && serverStats.cpuTicks1 != null
            ? round(((serverStats.cpuTicks1 - serverStats.cpuTicks0) / clkTck) / wallS * 100, 1)
            : null
        },
    client: {
      // Percent of one core; the generator is single-threaded, so near 100
      // means the generator itself limits the figures.
      cpuPct: round((cpu.user + cpu.system) / 1e6 / wallS * 100, 1),
      loopDelayP99Ms: round(Math.max(0, loopDelay.percentile(99) / 1e6 - LOOP_RES_MS), 2),
      loopDelayMaxMs: round(Math.max(0, loopDelay.max / 1e6 - LOOP_RES_MS), 2),
      rssMB: round(process.memoryUsage().rss / 1048576, 1)
    },
    machine: {
      cores: os.availableParallelism(),
      // Percent of one core, all processes (server, generator, others),
      // interrupts not included.
      cpuPct: machineTicks0 != null && machineTicks1 != null
        ? round(((machineTicks1 - machineTicks0) / clkTck) / wallS * 100, 1)
        : null
    }
  }
  if (opts.samples) result.samples = Array.from(stats.samples, (x) => round(x, 3))

  const L = result.latencyMs
  out(`== ${opts.label || 'bench'}: ${result.rooms} rooms x ${opts.peers} peers x ${opts.rate}/s for ${opts.duration}s (warmup ${opts.warmup}s) @ ${opts.url} (${opts.protocol})`)
  out(`   edits sent ${result.editsSent} (measured ${result.editsSentMeasured}, ${result.editsPerSec}/s of ${result.editsPerSecTarget}/s target)`)
  out(`   deliveries ${result.deliveriesMeasured} (${result.deliveriesPerSec}/s), ws msgs received ${result.msgsPerSec}/s (by type ${JSON.stringify(stats.msgTypesMeasured)}), ${Math.round(result.bytesPerSec / 1024)} KiB/s`)
  out(`   latency ms p50 ${L.p50}  p90 ${L.p90}  p99 ${L.p99}  p99.9 ${L.p999}  max ${L.max}  mean ${L.mean}`)
  out(`   lost edits ${lostEdits} (deliveries ${lostDeliveries}), diverged rooms ${divergedRooms}, connect failures ${connectFailures}, disconnects ${stats.disconnects}, errors ${stats.errors}`)
  if (result.server) out(`   server pid ${opts.pid}: RSS start ${result.server.rssStartMB} MB, peak ${result.server.rssPeakMB} MB, HWM ${result.server.hwmMB} MB, CPU ${result.server.cpuPct}% of one core`)
  out(`   generator: CPU ${result.client.cpuPct}% of one core, event-loop delay p99 ${result.client.loopDelayP99Ms} ms (max ${result.client.loopDelayMaxMs}), RSS ${result.client.rssMB} MB`)
  out(`   machine: CPU ${result.machine.cpuPct}% of one core (${result.machine.cores} cores), all processes, interrupts excluded`)
  for (const e of stats.errorLog.slice(0, 5)) out(`   error: ${e}`)

  const ok = lostEdits === 0 && divergedRooms === 0 && stats.errors === 0 && stats.disconnects === 0 && connectFailures === 0
  const exit = () => process.exit(ok ? 0 : 2)
  // A pipe takes 64 KiB at once (--samples makes more): exit once all is out.
  if (opts.json) process.stdout.write(JSON.stringify(result) + '\n', exit)
  else exit()
}

main().catch((err) => {
  log(`bench.mjs: ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
