#!/usr/bin/env node
// Scripted Yjs client for integration tests.
//
// Drives ONE stock y-websocket `WebsocketProvider` (unmodified, with `ws` as the
// WebSocket implementation) and exposes it over a JSON-lines protocol so a test
// harness (our Rust tests) can run several of these processes concurrently and
// orchestrate them deterministically:
//
//   stdin : one JSON command per line   {"id":1,"cmd":"insert",...}
//   stdout: one JSON reply per line     {"id":1,"ok":true,...}
//           plus unsolicited events     {"event":"status","status":"connected"}
//
// Nothing but protocol lines is ever written to stdout; diagnostics (including
// the provider's own console.warn/error) go to stderr.
//
// Commands start in arrival order; synchronous ones (insert, text, ...) finish
// before the next line is read, asynchronous ones (connect, type, waitText, ...)
// run concurrently with later commands. A harness that wants strict sequencing
// simply waits for each reply (matched by `id`) before sending the next command.
//
// See README.md in this directory for the full protocol.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import readline from 'node:readline'

// The provider logs through console.*; keep stdout clean for the protocol.
console.log = console.info = console.warn = console.error = (...args) => {
  process.stderr.write(args.map(String).join(' ') + '\n')
}

const DEFAULT_TIMEOUT_MS = 10000

// ---------------------------------------------------------------------------
// Output

let stdoutBroken = false
process.stdout.on('error', () => {
  // Parent went away (EPIPE): nobody can read us any more, so do not linger.
  stdoutBroken = true
  shutdown(0)
})

function emit (obj) {
  if (stdoutBroken) return
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// ---------------------------------------------------------------------------
// State: one Y.Doc for the whole process (so edits made before `connect` or
// while disconnected are kept and synced later), at most one live provider.

const doc = new Y.Doc()
const files = doc.getMap('files')
/** @type {WebsocketProvider|null} */
let provider = null
/** Last close seen on the current provider, for error reports. */
let lastClose = null
/** Last connection error (e.g. HTTP 401 on upgrade) on the current provider. */
let lastError = null

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function getText (name, create) {
  let t = files.get(name)
  if (t === undefined && create) {
    // Only create when absent: two clients creating the same key concurrently
    // is last-writer-wins in Y.Map and one Y.Text would be silently dropped,
    // so tests should let one client create a file and the others sync first.
    t = new Y.Text()
    files.set(name, t)
  }
  if (t !== undefined && !(t instanceof Y.Text)) {
    throw new Error(`files[${JSON.stringify(name)}] is not a Y.Text`)
  }
  return t
}

function textOf (name) {
  const t = getText(name, false)
  return t === undefined ? null : t.toString()
}

function allFiles () {
  const out = {}
  files.forEach((v, k) => {
    out[k] = v instanceof Y.Text ? v.toString() : (v && typeof v.toJSON === 'function' ? v.toJSON() : v)
  })
  return out
}

function peers () {
  const out = []
  if (provider === null) return out
  provider.awareness.getStates().forEach((state, clientId) => {
    if (clientId !== doc.clientID) out.push({ clientId, state })
  })
  return out
}

/**
 * Resolve when `check()` returns true, re-evaluating whenever one of the
 * given observables fires; reject with 'timeout' after `timeoutMs`.
 * Event-driven rather than polling so waits react immediately.
 */
function waitFor (check, subscribe, timeoutMs) {
  return new Promise((resolve, reject) => {
    if (check()) return resolve()
    let timer = null
    const unsubscribe = subscribe(() => {
      if (check()) {
        clearTimeout(timer)
        unsubscribe()
        resolve()
      }
    })
    timer = setTimeout(() => {
      unsubscribe()
      reject(new Error('timeout'))
    }, timeoutMs)
  })
}

function onDocUpdate (fn) {
  doc.on('update', fn)
  return () => doc.off('update', fn)
}

// Never index into the middle of a surrogate pair: Yjs counts UTF-16 code
// units, so an odd split would corrupt an emoji into two lone surrogates.
function snapToCodePoint (str, index) {
  if (index > 0 && index < str.length) {
    const c = str.charCodeAt(index)
    if (c >= 0xdc00 && c <= 0xdfff) {
      const p = str.charCodeAt(index - 1)
      if (p >= 0xd800 && p <= 0xdbff) return index - 1
    }
  }
  return index
}

// ---------------------------------------------------------------------------
// Connection handling

function closeInfo (ev) {
  if (!ev) return { closeCode: null, closeReason: null }
  return { closeCode: ev.code ?? null, closeReason: ev.reason != null ? String(ev.reason) : null }
}

function destroyProvider (p) {
  p.destroy()
  // provider.destroy() leaves its Awareness alive, and that one's 15 s
  // renewal timer would keep running (and keep the event loop alive).
  p.awareness.destroy()
}

function createProvider (c) {
  const params = {}
  if (c.token != null) params.token = String(c.token)
  if (c.params && typeof c.params === 'object') Object.assign(params, c.params)
  const p = new WebsocketProvider(String(c.url), String(c.room), doc, {
    WebSocketPolyfill: WebSocket,
    params,
    // BroadcastChannel would let providers in one process bypass the server
    // (and keeps Node's event loop alive); tests must go through the server.
    disableBc: true,
    // Keep reconnect attempts quick in tests (stock default is 2500 ms).
    maxBackoffTime: c.maxBackoffMs != null ? Number(c.maxBackoffMs) : 1000,
    connect: false
  })
  p.on('status', ({ status }) => emit({ event: 'status', status }))
  p.on('connection-close', (ev) => {
    lastClose = ev
    emit({ event: 'close', code: ev ? ev.code : null, reason: ev ? String(ev.reason ?? '') : null })
  })
  p.on('connection-error', (ev) => {
    // With `ws`, a refused upgrade (e.g. HTTP 401/403/404) surfaces here as
    // "Unexpected server response: 401" followed by a close with code 1006.
    const message = ev && (ev.message || (ev.error && ev.error.message)) || 'connection error'
    const m = /Unexpected server response: (\d+)/.exec(message)
    lastError = { message, httpStatus: m ? Number(m[1]) : null }
    emit({ event: 'error', error: message, httpStatus: lastError.httpStatus })
  })
  p.on('sync', (synced) => emit({ event: 'synced', synced }))
  return p
}

/**
 * Connect (or reconnect) `provider` and wait for the outcome.
 * Resolves to the reply fields; failures are replies with ok:false.
 */
function awaitConnection (c) {
  const p = provider
  const timeoutMs = c.timeoutMs != null ? Number(c.timeoutMs) : DEFAULT_TIMEOUT_MS
  return new Promise((resolve) => {
    let done = false
    let synced = false
    const finish = (reply, stopProvider) => {
      if (done) return
      done = true
      clearTimeout(timer)
      p.off('sync', onSync)
      p.off('connection-close', onClose)
      // The stock provider reconnects forever with backoff. After a refused or
      // expected close, stop it so the test sees exactly one close (and the
      // process does not spam a server that is supposed to reject us).
      if (stopProvider) p.disconnect()
      resolve(reply)
    }
    const onSync = (s) => {
      if (!s) return
      synced = true
      if (!c.expectClose) finish({ ok: true, clientId: doc.clientID }, false)
    }
    const onClose = (ev) => {
      if (c.expectClose) {
        finish({ ok: true, synced, ...closeInfo(ev), httpStatus: lastError ? lastError.httpStatus : null }, true)
      } else if (!c.retry) {
        finish({
          ok: false,
          error: lastError ? lastError.message : 'closed before sync',
          httpStatus: lastError ? lastError.httpStatus : null,
          ...closeInfo(ev)
        }, true)
      }
    }
    const timer = setTimeout(() => {
      if (c.expectClose) {
        finish({ ok: false, error: 'timeout waiting for close', synced }, false)
      } else {
        finish({
          ok: false,
          error: 'timeout waiting for sync',
          httpStatus: lastError ? lastError.httpStatus : null,
          ...closeInfo(lastClose)
        }, true)
      }
    }, timeoutMs)
    p.on('sync', onSync)
    p.on('connection-close', onClose)
    lastClose = null
    lastError = null
    p.connect()
  })
}

// ---------------------------------------------------------------------------
// Commands. Each returns the reply's extra fields (or a promise of them);
// throwing produces {"ok":false,"error":message}.

const commands = {
  async connect (c) {
    if (!c.url || c.room == null) throw new Error('connect needs url and room')
    if (provider !== null && provider.shouldConnect) throw new Error('already connected; disconnect first')
    if (provider !== null) destroyProvider(provider)
    provider = createProvider(c)
    // Set before connecting so the initial awareness broadcast carries it.
    if (c.awareness !== undefined) provider.awareness.setLocalState(c.awareness)
    return awaitConnection(c)
  },

  async reconnect (c) {
    if (provider === null) throw new Error('never connected')
    if (provider.wsconnected) return { ok: true, clientId: doc.clientID, already: true }
    return awaitConnection(c)
  },

  async disconnect () {
    if (provider === null) return {}
    const ws = provider.ws
    provider.disconnect()
    // Wait for the socket to actually close so the server has seen us leave
    // before the harness asserts on presence.
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await Promise.race([
        new Promise((resolve) => ws.addEventListener('close', resolve, { once: true })),
        sleep(2000)
      ])
    }
    return {}
  },

  // Sends one binary frame of `bytes` zero bytes on the live socket, as a careless or hostile
  // peer might, and answers with the close that follows.
  async sendRaw (c) {
    if (provider === null || !provider.ws) throw new Error('not connected')
    const ws = provider.ws
    const closed = new Promise((resolve) => ws.addEventListener('close', resolve, { once: true }))
    ws.send(Buffer.alloc(Number(c.bytes)))
    const timeoutMs = c.timeoutMs != null ? Number(c.timeoutMs) : DEFAULT_TIMEOUT_MS
    const ev = await Promise.race([closed, sleep(timeoutMs).then(() => null)])
    provider.disconnect()
    if (ev === null) throw new Error('no close within ' + timeoutMs + ' ms')
    return closeInfo(ev)
  },

  status () {
    return {
      connected: provider !== null && provider.wsconnected,
      synced: provider !== null && provider.synced,
      clientId: doc.clientID
    }
  },

  insert (c) {
    const t = getText(String(c.file), true)
    const index = Number(c.index ?? t.length)
    if (!(index >= 0 && index <= t.length)) throw new Error(`index ${index} out of range 0..${t.length}`)
    t.insert(index, String(c.text))
    return { length: t.length }
  },

  delete (c) {
    const t = getText(String(c.file), false)
    if (t === undefined) throw new Error(`no such file ${c.file}`)
    const index = Number(c.index)
    const len = Number(c.len)
    if (!(index >= 0 && len >= 0 && index + len <= t.length)) {
      throw new Error(`range ${index}+${len} out of range 0..${t.length}`)
    }
    t.delete(index, len)
    return { length: t.length }
  },

  async type (c) {
    const t = getText(String(c.file), true)
    const delayMs = c.delayMs != null ? Number(c.delayMs) : 2
    const at = c.at ?? 'end'
    // A numeric start position is tracked as a Yjs relative position so the
    // "cursor" moves with concurrent remote edits, like a real editor's.
    let cursor = null
    if (typeof at === 'number') {
      if (!(at >= 0 && at <= t.length)) throw new Error(`at ${at} out of range 0..${t.length}`)
      cursor = Y.createRelativePositionFromTypeIndex(t, at)
    } else if (at !== 'end' && at !== 'random') {
      throw new Error('at must be "end", "random" or a number')
    }
    let typed = 0
    for (const ch of String(c.text)) { // iterates code points, not code units
      let index
      if (at === 'end') {
        index = t.length
      } else if (at === 'random') {
        index = snapToCodePoint(t.toString(), Math.floor(Math.random() * (t.length + 1)))
      } else {
        const abs = Y.createAbsolutePositionFromRelativePosition(cursor, doc)
        index = abs ? abs.index : t.length
      }
      t.insert(index, ch)
      if (cursor !== null) cursor = Y.createRelativePositionFromTypeIndex(t, index + ch.length)
      typed++
      if (delayMs > 0) await sleep(delayMs)
    }
    return { typed, length: t.length }
  },

  text (c) {
    return { text: textOf(String(c.file)) }
  },

  files () {
    return { files: allFiles() }
  },

  awareness (c) {
    if (provider === null) throw new Error('not connected')
    provider.awareness.setLocalState(c.state ?? null)
    return {}
  },

  peers () {
    return { peers: peers() }
  },

  async waitText (c) {
    const file = String(c.file)
    const want = String(c.text)
    try {
      await waitFor(() => textOf(file) === want, onDocUpdate, c.timeoutMs != null ? Number(c.timeoutMs) : DEFAULT_TIMEOUT_MS)
      return { text: want }
    } catch (e) {
      return { ok: false, error: e.message, text: textOf(file) }
    }
  },

  async waitPeers (c) {
    if (provider === null) throw new Error('not connected')
    const count = Number(c.count)
    const aw = provider.awareness
    const subscribe = (fn) => { aw.on('change', fn); return () => aw.off('change', fn) }
    try {
      await waitFor(() => peers().length === count, subscribe, c.timeoutMs != null ? Number(c.timeoutMs) : DEFAULT_TIMEOUT_MS)
      return { peers: peers() }
    } catch (e) {
      return { ok: false, error: e.message, peers: peers() }
    }
  },

  async quit () {
    // Reply first, then leave: shutdown() runs after the reply is written.
    setImmediate(() => shutdown(0))
    return {}
  }
}

async function handleLine (line) {
  if (line.trim() === '') return
  let c
  try {
    c = JSON.parse(line)
  } catch (e) {
    emit({ id: null, ok: false, error: 'invalid JSON: ' + e.message })
    return
  }
  const id = c.id ?? null
  const fn = Object.prototype.hasOwnProperty.call(commands, c.cmd) ? commands[c.cmd] : null
  if (fn === null) {
    emit({ id, ok: false, error: `unknown cmd ${JSON.stringify(c.cmd)}` })
    return
  }
  try {
    const res = (await fn(c)) || {}
    emit({ id, ok: true, ...res })
  } catch (e) {
    emit({ id, ok: false, error: e && e.message ? e.message : String(e) })
  }
}

// ---------------------------------------------------------------------------
// Lifecycle

let shuttingDown = false
async function shutdown (code) {
  if (shuttingDown) return
  shuttingDown = true
  // Hard stop in case a socket refuses to close: never leave a process behind.
  setTimeout(() => process.exit(code), 1500).unref()
  if (provider !== null) {
    const ws = provider.ws
    destroyProvider(provider)
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await Promise.race([
        new Promise((resolve) => ws.addEventListener('close', resolve, { once: true })),
        sleep(1000)
      ])
    }
  }
  process.exit(code)
}

const inflight = new Set()
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
rl.on('line', (line) => {
  const p = handleLine(line)
  inflight.add(p)
  p.finally(() => inflight.delete(p))
})
// stdin EOF means the harness is done (or gone): let commands already sent
// finish and reply (they all have bounded duration), then exit cleanly.
rl.on('close', async () => {
  await Promise.allSettled([...inflight])
  shutdown(0)
})
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(130))
