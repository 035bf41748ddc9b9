// Drives a real VS Code — code-server in headless Chromium, through playwright-core — with the
// duet extension installed from its .vsix. Used by tests/tests/editor_vscode.rs.
//
//   node tests/vscode/driver.mjs --code-server DIR --vsix FILE --workspace DIR --scratch DIR
//        [--settings FILE] [--open main.py] [--timeout-ms 90000]
//
// Start-up: installs the vsix into a fresh extensions folder, starts code-server on a free
// loopback port (HOME, XDG_* and the user data under --scratch), opens the workspace in
// Chromium, waits for the workbench and for the extension (it writes its state to
// $DUET_TEST_STATE_FILE), opens --open with Ctrl+P, clicks into it and goes to its end. Then it
// prints {"event":"ready", "stateFile", "timings", ...}.
//
// Then JSON-line commands on stdin, each answered on stdout with its id and "ok":
//   {"cmd":"type","text":"...","delayMs":30}   page.keyboard.type (one key event per character)
//   {"cmd":"press","key":"Control+End"}         page.keyboard.press
//   {"cmd":"open","file":"other.py"}            opens a file of the workspace, cursor at its end
//   {"cmd":"palette","command":"duet: Follow a peer","pick":"ann"}
//                                               runs a command from the palette, picks an item
//   {"cmd":"palette","command":"duet: Join a room","input":"ws://…"}
//                                               ... or types into the input box it opens
//   {"cmd":"state"}                             the extension's state (duet._testState)
//   {"cmd":"sleep","ms":500}                    waits (to sequence commands)
//   {"cmd":"dom"}                               {statusBar, notifications: [texts], viewLines, activeTab}
//   {"cmd":"notifications"}                     {toasts: [texts]}, the notifications on screen
//   {"cmd":"screenshot","path":"x.png"}
//   {"cmd":"quit"}                              closes everything, then exits 0
// Unsolicited: {"event":"pids","codeServer":N,"chromium":N} as soon as they are known (both are
// process-group leaders: the harness kills the groups if this script dies), {"event":"log",...}.
// On stdin EOF, SIGTERM or the overall --timeout-ms it cleans up and exits.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const t0 = Date.now();
let codeServer;
let browserServer;
let browser;
let page;
let closing = false;

const here = path.dirname(fileURLToPath(import.meta.url));
const args = parseArgs(process.argv.slice(2));
const codeServerDir = need('code-server');
const vsix = need('vsix');
const workspace = path.resolve(need('workspace'));
const scratch = path.resolve(need('scratch'));
const settingsFile = args.settings ?? path.join(here, 'settings.json');
const openFile = args.open ?? 'main.py';
// How long opening a file may take (every try included); an `open` command waits a little longer.
const OPEN_BOUND_MS = 45000;
const overallTimeout = Number(args['timeout-ms'] ?? 90000);
const stateFile = path.join(scratch, 'duet-state.json');

const timings = {};
const mark = (what) => (timings[what] = Date.now() - t0);

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  return out;
}

function need(name) {
  if (!args[name]) {
    fail(`--${name} is required`);
  }
  return args[name];
}

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

function log(message) {
  process.stderr.write(`[driver +${((Date.now() - t0) / 1000).toFixed(1)}s] ${message}\n`);
}

function fail(message) {
  emit({ event: 'fatal', error: message });
  log(`fatal: ${message}`);
  void shutdown(1);
}

async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function poll(what, ms, check, every = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function readState() {
  try {
    return JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  } catch {
    return null;
  }
}

function killGroup(child, name) {
  if (!child?.pid) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
    log(`killed ${name} (process group ${child.pid})`);
  } catch {
    // already gone
  }
}

async function shutdown(code) {
  if (closing) return;
  closing = true;
  const chromiumProcess = browserServer?.process();
  try {
    if (browserServer) await withTimeout(browserServer.close(), 3000, 'closing chromium');
  } catch (e) {
    log(`closing chromium: ${e.message}`);
  }
  killGroup(chromiumProcess, 'chromium');
  killGroup(codeServer, 'code-server');
  process.exit(code);
}

async function start() {
  const home = path.join(scratch, 'home');
  const userData = path.join(scratch, 'user-data');
  const extensions = path.join(scratch, 'extensions');
  for (const dir of [home, path.join(userData, 'User'), extensions]) fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(settingsFile, path.join(userData, 'User', 'settings.json'));
  const bin = path.join(codeServerDir, 'node_modules', '.bin', 'code-server');
  if (!fs.existsSync(bin)) fail(`code-server is not installed in ${codeServerDir}: run tests/run (or tests/vscode/install.sh)`);
  const env = {
    ...process.env,
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_DATA_HOME: path.join(home, '.local', 'share'),
    XDG_STATE_HOME: path.join(home, '.local', 'state'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    DUET_TEST_STATE_FILE: stateFile,
  };

  const install = spawnSync(
    bin,
    ['--user-data-dir', userData, '--extensions-dir', extensions, '--install-extension', path.resolve(vsix)],
    { env, encoding: 'utf8', timeout: 30000 },
  );
  if (install.status !== 0) {
    fail(`code-server --install-extension failed (${install.status ?? install.signal}): ${install.stdout}${install.stderr}`);
    return;
  }
  mark('extensionInstalled');

  const port = await freePort();
  const codeServerLog = fs.openSync(path.join(scratch, 'code-server.log'), 'a');
  codeServer = spawn(
    bin,
    [
      '--bind-addr', `127.0.0.1:${port}`,
      '--auth', 'none',
      '--disable-telemetry',
      '--disable-update-check',
      '--disable-workspace-trust',
      '--disable-getting-started-override',
      '--user-data-dir', userData,
      '--extensions-dir', extensions,
      workspace,
    ],
    { env, stdio: ['ignore', codeServerLog, codeServerLog], detached: true },
  );
  codeServer.on('exit', (code, signal) => {
    if (!closing) fail(`code-server exited (${code ?? signal}); see ${path.join(scratch, 'code-server.log')}`);
  });
  emit({ event: 'pids', codeServer: codeServer.pid });
  const base = `http://127.0.0.1:${port}`;
  await poll('code-server to answer /healthz', 20000, async () => {
    try {
      return (await fetch(`${base}/healthz`)).ok;
    } catch {
      return false;
    }
  });
  mark('codeServerUp');

  // launchServer (not launch): it gives the browser's process, to kill its group at the end.
  browserServer = await chromium.launchServer({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    timeout: 20000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  emit({ event: 'pids', codeServer: codeServer.pid, chromium: browserServer.process().pid });
  browser = await chromium.connect(browserServer.wsEndpoint(), { timeout: 20000 });
  page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  await page.goto(`${base}/?folder=${encodeURIComponent(workspace)}`);
  await page.waitForSelector('.monaco-workbench', { timeout: 30000 });
  mark('workbench');

  // The extension activates on start-up and writes its state as soon as it exists.
  await poll('the duet extension to activate (no state in $DUET_TEST_STATE_FILE)', 20000, () => readState()?.activated);
  mark('extensionActivated');

  await open(openFile);
  mark('fileOpen');
  emit({ event: 'ready', stateFile, port, timings, state: readState() });
}

/** Opens `file` of the workspace (quick open), clicks into it and puts the cursor at its end. */
async function open(file) {
  // Quick open is given the file's absolute path: VS Code lists an existing absolute path at
  // once, where a bare name waits for the file search to index the folder (slow on a busy
  // machine). A try that fails for any reason closes the quick open, so the next one starts
  // from a closed widget (an open one would take Control+P as "next item").
  const target = path.join(workspace, file);
  await poll(`${file} to open`, OPEN_BOUND_MS, async () => {
    try {
      await page.keyboard.press('Control+P');
      await page.waitForSelector('.quick-input-widget input', { state: 'visible', timeout: 5000 });
      await page.keyboard.press('Control+A');
      await page.keyboard.type(target);
      await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 5000 });
      await page.keyboard.press('Enter');
      await poll('the editor', 5000, () => readState()?.active?.path?.endsWith(`/${file}`));
      return true;
    } catch (e) {
      log(`opening ${file}: ${e.message}; trying again`);
      await page.keyboard.press('Escape');
      return false;
    }
  }, 200);
  await page.click('.editor-instance .monaco-editor .view-lines');
  await page.keyboard.press('Control+End');
}

async function handle(command) {
  switch (command.cmd) {
    case 'type':
      await page.keyboard.type(command.text, { delay: command.delayMs ?? 30 });
      return {};
    case 'press':
      await page.keyboard.press(command.key);
      return {};
    case 'open':
      await open(command.file);
      return {};
    case 'palette': {
      // Runs a command by its title from the command palette; with `pick`, then chooses the item
      // of the quick pick it opens whose text contains `pick`, and returns that pick's rows.
      await page.keyboard.press('Control+Shift+P');
      await page.waitForSelector('.quick-input-widget input', { state: 'visible' });
      await page.keyboard.type(command.command);
      await page.waitForFunction(
        (title) => [...document.querySelectorAll('.quick-input-list .monaco-list-row')].some((r) => r.textContent.includes(title)),
        command.command,
      );
      await page.keyboard.press('Enter');
      let rows = [];
      if (command.pick !== undefined) {
        await page.waitForFunction(
          (pick) => [...document.querySelectorAll('.quick-input-list .monaco-list-row')].some((r) => r.textContent.includes(pick)),
          command.pick,
        );
        rows = await page.$$eval('.quick-input-list .monaco-list-row', (rs) => rs.map((r) => r.textContent.trim()));
        await page.keyboard.type(command.pick);
        await page.keyboard.press('Enter');
      }
      if (command.input !== undefined) {
        // The palette closes, then the command's input box opens in the same widget, empty.
        await page.waitForFunction(() => {
          const widget = document.querySelector('.quick-input-widget');
          const input = widget?.querySelector('input');
          return widget && input && widget.style.display !== 'none' && input.value === '' && document.activeElement === input;
        });
        await page.keyboard.type(command.input);
        await page.keyboard.press('Enter');
        await page.waitForSelector('.quick-input-widget', { state: 'hidden' });
      }
      return { rows };
    }
    case 'sleep':
      await new Promise((r) => setTimeout(r, command.ms));
      return {};
    case 'state':
      return { state: readState() };
    case 'dom':
      return {
        statusBar: await page.$$eval('.statusbar-item', (items) => items.map((i) => i.textContent.trim()).filter(Boolean)),
        notifications: await page.$$eval('.notifications-toasts .notification-list-item-message', (items) => items.map((i) => i.textContent.trim())),
        viewLines: (await page.innerText('.editor-instance .monaco-editor .view-lines')).replace(/\u00a0/g, ' '),
        activeTab: await page.$$eval('.tab.active .label-name', (tabs) => tabs.map((t) => t.textContent.trim()).join('')),
      };
    case 'notifications':
      return {
        toasts: await page.$$eval('.notifications-toasts .notification-list-item-message', (items) => items.map((i) => i.textContent.trim())),
      };
    case 'screenshot':
      fs.mkdirSync(path.dirname(path.resolve(command.path)), { recursive: true });
      await page.screenshot({ path: command.path });
      return {};
    case 'quit':
      emit({ id: command.id ?? null, ok: true });
      await shutdown(0);
      return {};
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

process.on('SIGTERM', () => void shutdown(0));
process.on('SIGINT', () => void shutdown(130));
setTimeout(() => fail(`the overall time limit (${overallTimeout} ms) ran out`), overallTimeout).unref();

try {
  await start();
} catch (e) {
  fail(e.stack ?? String(e));
}

const input = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
input.on('line', (line) => {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    emit({ id: null, ok: false, error: `not JSON: ${line}` });
    return;
  }
  // One command at a time, in order (they all drive the same page).
  queue = queue.then(async () => {
    try {
      emit({ id: command.id ?? null, ok: true, ...(await withTimeout(handle(command), command.timeoutMs ?? (command.cmd === 'open' ? OPEN_BOUND_MS + 15000 : 30000), command.cmd)) });
    } catch (e) {
      emit({ id: command.id ?? null, ok: false, error: e.message });
    }
  });
});
input.on('close', () => void queue.then(() => shutdown(0)));
