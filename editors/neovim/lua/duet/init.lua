-- duet for Neovim: starts the duet bridge (`duet-lsp`) as a language server for the files of the
-- workspace, and adds commands, a statusline component and peers' cursors.
--
--   require("duet").setup({ server = "http://localhost:8000", name = "ann", color = "#e06c75" })
--
-- See :help duet.

local api = vim.api
local uv = vim.uv or vim.loop
local peers = require("duet.peers")
local history = require("duet.history")
local messages = require("duet.messages")

local has011 = vim.fn.has("nvim-0.11") == 1

--- The name of duet's language client.
local CLIENT_NAME = "duet"

local M = {}

--- Defaults; `setup()` merges the user's options on top.
M.defaults = {
  -- The bridge's command line.
  cmd = { "duet-lsp" },
  -- Extra environment for the bridge (e.g. { DUET_LOG_FILE = "/tmp/duet.log" }).
  cmd_env = nil,
  -- Passed to the bridge as initializationOptions (any of them may be nil):
  server = nil, -- default server for :DuetCreate, e.g. "http://localhost:8000"
  name = nil, -- your name as peers see it (the bridge defaults to $USER)
  color = nil, -- your colour as peers see it, "#rrggbb"
  invite = nil, -- join this room at start: "ws://HOST:PORT/ws/<room>?token=<token>"
  ca = nil, -- a PEM file of CA certificates to trust besides the system's (a private CA)
  -- Only buffers of these filetypes are shared; nil: every file buffer.
  filetypes = nil,
  -- The workspace root: a string, or a function returning one; nil: the directory of the
  -- nearest `.duet.toml` at or above the working directory, else the working directory.
  root_dir = nil,
  -- Our cursor goes out at most this often (ms).
  cursor_throttle_ms = 50,
  -- Say so when joining takes longer than this (ms); the bridge keeps trying meanwhile.
  connect_timeout_ms = 5000,
  -- Where peers' names go: "inline" (at their cursor), "eol", "right_align" or "overlay".
  label_position = "inline",
  -- `u` and `<C-r>` in shared buffers undo and redo your own edits only (peers' stay);
  -- false keeps Neovim's undo, which undoes peers' edits too.
  undo = true,
}

M.config = vim.deepcopy(M.defaults)
M.did_setup = false

--- What the bridge last told us.
M.state = {
  client_id = nil,
  root = nil,
  status = nil, -- last `duet/status` params
  peers = {}, -- last `duet/peers` list
  peer_count = 0,
  following = nil, -- clientId of the peer we follow
  follow_name = nil,
  pending = {}, -- functions to run once the client is initialized
  shown = {}, -- recent showMessage texts, to avoid showing the same error twice
  quiet_status_until = 0,
  connect_seq = 0,
}

local function now()
  return uv.now()
end

local notify = messages.notify
M.notify = notify

-- ------------------------------------------------------------------------------------------
-- Compatibility between Neovim 0.10 (dot methods) and 0.11 (colon methods).

local function c_request(client, method, params, handler, bufnr)
  if has011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function c_notify(client, method, params)
  if has011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

local function c_stopped(client)
  if has011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

-- ------------------------------------------------------------------------------------------
-- The workspace and which buffers are shared.

local function normalize(path)
  return vim.fs.normalize(vim.fn.fnamemodify(path, ":p")):gsub("/$", "")
end

--- The workspace root: the option, else the nearest `.duet.toml` above the cwd, else the cwd.
function M.root()
  if M.state.root then
    return M.state.root
  end
  local root = M.config.root_dir
  if type(root) == "function" then
    root = root()
  end
  if not root then
    local cwd = uv.cwd() or vim.fn.getcwd()
    local found = vim.fs.find(".duet.toml", { upward = true, path = cwd, type = "file" })[1]
    root = found and vim.fs.dirname(found) or cwd
  end
  M.state.root = normalize(root)
  return M.state.root
end

--- Whether a buffer is a normal file buffer inside the workspace (and of a wanted filetype).
function M.shareable(bufnr)
  if not api.nvim_buf_is_valid(bufnr) or not api.nvim_buf_is_loaded(bufnr) then
    return false
  end
  if vim.bo[bufnr].buftype ~= "" then
    return false
  end
  local name = api.nvim_buf_get_name(bufnr)
  if name == "" or name:match("^%a[%w+.-]*://") then
    return false
  end
  local fts = M.config.filetypes
  if fts and not vim.tbl_contains(fts, vim.bo[bufnr].filetype) then
    return false
  end
  local root = M.root()
  local path = normalize(name)
  return path == root or path:sub(1, #root + 1) == root .. "/"
end

-- ------------------------------------------------------------------------------------------
-- The client.

--- The running duet client, or nil.
function M.client()
  local id = M.state.client_id
  local client = id and vim.lsp.get_client_by_id(id)
  if client and not c_stopped(client) then
    return client
  end
  return nil
end

local function init_options()
  local options = {}
  for _, key in ipairs({ "invite", "server", "name", "color", "ca" }) do
    if M.config[key] ~= nil and M.config[key] ~= "" then
      options[key] = M.config[key]
    end
  end
  -- An empty table would go out as a JSON array, which the bridge refuses.
  return next(options) and options or nil
end

local message_levels = {
  [1] = vim.log.levels.ERROR,
  [2] = vim.log.levels.WARN,
  [3] = vim.log.levels.INFO,
  [4] = vim.log.levels.DEBUG,
}

--- The bridge reports results and errors with window/showMessage: show them with vim.notify
--- (Neovim's default handler only echoes them, past notification plugins).
local function on_show_message(_, params)
  local message = params and params.message or ""
  if message:match("^duet: status: ") and now() < M.state.quiet_status_until then
    return vim.NIL -- the summary of our own :DuetStatus, which we show whole instead
  end
  if vim.tbl_count(M.state.shown) > 100 then
    M.state.shown = {}
  end
  M.state.shown[message] = now()
  notify(message, message_levels[params.type] or vim.log.levels.INFO)
  return vim.NIL
end

--- A peer's edit, from the bridge. Neovim skips an edit made for a version of the buffer it has
--- moved past (the user typed meanwhile; the bridge then sends it again) and prints "Buffer
--- file:///… newer than edits.", which, wider than the command line, opens the hit-enter prompt
--- that takes the next key typed. Such an edit is answered here without a word, and truly: not
--- applied. Everything else goes to Neovim's handler.
local function on_apply_edit(err, params, ctx)
  local first = vim.tbl_get(params or {}, "edit", "documentChanges", 1, "textDocument")
  local version = first and first.version
  if type(version) == "number" and version > 0 then
    local bufnr = vim.uri_to_bufnr(first.uri)
    if (vim.lsp.util.buf_versions[bufnr] or 0) > version then
      return { applied = false, failureReason = "the buffer changed since that version" }
    end
  end
  return vim.lsp.handlers["workspace/applyEdit"](err, params, ctx)
end

local function redraw()
  pcall(api.nvim_exec_autocmds, "User", { pattern = "DuetStatus", modeline = false })
  vim.cmd("redrawstatus!")
end

local function watch_connecting(status)
  M.state.connect_seq = M.state.connect_seq + 1
  local seq, room = M.state.connect_seq, status.room
  vim.defer_fn(function()
    local s = M.state.status
    if seq == M.state.connect_seq and s and s.state == "connecting" and s.room == room then
      notify(
        ("duet: still connecting to %s (is the server running and reachable?). The bridge keeps trying; :DuetLeave stops it."):format(
          tostring(s.server or "the server")
        ),
        vim.log.levels.WARN
      )
    end
  end, M.config.connect_timeout_ms)
end

local function on_status(_, status)
  local previous = M.state.status
  M.state.status = status
  if type(status.peers) == "table" then
    M.state.peer_count = #status.peers
  end
  if status.state == "connecting" and not (previous and previous.state == "connecting" and previous.room == status.room) then
    watch_connecting(status)
  elseif status.state ~= "connecting" then
    M.state.connect_seq = M.state.connect_seq + 1
  end
  if status.state == "idle" then
    M.state.peers, M.state.peer_count = {}, 0
    peers.clear()
    M.unfollow(true)
  elseif status.state == "connected" and not (previous and previous.state == "connected" and previous.room == status.room) then
    -- Just joined (or back online): show peers where we are right away. (The bridge sends a
    -- status with every peers update too: not a reason to send our cursor again.)
    M.state.last_cursor = nil
    vim.schedule(M.send_cursor)
  end
  redraw()
  return vim.NIL
end

local function on_peers(_, params)
  M.state.peers = (params and params.peers) or {}
  M.state.peer_count = #M.state.peers
  local client = M.client()
  peers.render(M.state.peers, client and client.offset_encoding or "utf-16", M.config)
  if M.state.following then
    local peer = M.find_peer_by_id(M.state.following)
    if not peer then
      notify(("duet: %s left; no longer following"):format(M.state.follow_name or "the peer"))
      M.unfollow(true)
    else
      M.go_to(peer)
    end
  end
  redraw()
  return vim.NIL
end

local function reset_state()
  M.state.client_id = nil
  M.state.status = nil
  M.state.peers, M.state.peer_count = {}, 0
  M.state.pending = {}
  M.state.connect_seq = M.state.connect_seq + 1
  peers.clear()
  M.unfollow(true)
  redraw()
end

local function client_config()
  return {
    name = CLIENT_NAME,
    cmd = M.config.cmd,
    cmd_env = M.config.cmd_env,
    root_dir = M.root(),
    workspace_folders = { { uri = vim.uri_from_fname(M.root()), name = vim.fs.basename(M.root()) } },
    init_options = init_options(),
    -- Edits leave at once, not in 150 ms batches.
    flags = { debounce_text_changes = 0 },
    handlers = {
      ["duet/status"] = on_status,
      ["duet/peers"] = on_peers,
      ["duet/away"] = history.on_away,
      ["window/showMessage"] = on_show_message,
      ["workspace/applyEdit"] = on_apply_edit,
    },
    on_init = function(client)
      vim.schedule(function()
        local pending = M.state.pending
        M.state.pending = {}
        for _, fn in ipairs(pending) do
          fn(client)
        end
      end)
    end,
    on_exit = function(code, signal, client_id)
      vim.schedule(function()
        if M.state.client_id == client_id then
          reset_state()
          if code ~= 0 or (signal and signal ~= 0) then
            notify(("duet: duet-lsp exited (code %s, signal %s)"):format(code, signal), vim.log.levels.WARN)
          end
        end
      end)
    end,
  }
end

--- Whether the bridge's command can run; says so once if not.
local function bridge_found()
  local exe = M.config.cmd and M.config.cmd[1]
  if exe and vim.fn.executable(exe) == 1 then
    return true
  end
  if not M.state.missing_reported then
    M.state.missing_reported = true
    notify(
      ("duet: %s not found: install it (cargo install --path lsp) or set `cmd` in setup(); see :checkhealth duet"):format(
        tostring(exe)
      ),
      vim.log.levels.ERROR
    )
  end
  return false
end

local function reuse_client(client, config)
  return client.name == config.name and not c_stopped(client)
end

--- Attaches a buffer to the duet client (starting it) if the buffer is shared.
function M.attach(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if not M.shareable(bufnr) or not bridge_found() then
    return nil
  end
  local id = vim.lsp.start(client_config(), { bufnr = bufnr, reuse_client = reuse_client })
  if id then
    M.state.client_id = id
  end
  return id
end

--- The duet client, started (and given every shared buffer) if it is not running.
function M.ensure_client()
  local client = M.client()
  if client then
    return client
  end
  if not bridge_found() then
    return nil
  end
  local id
  if has011 then
    id = vim.lsp.start(client_config(), { attach = false, reuse_client = reuse_client })
  else
    id = vim.lsp.start_client(client_config())
  end
  if not id then
    notify("duet: could not start " .. table.concat(M.config.cmd, " "), vim.log.levels.ERROR)
    return nil
  end
  M.state.client_id = id
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if M.shareable(bufnr) then
      vim.lsp.buf_attach_client(bufnr, id)
    end
  end
  return vim.lsp.get_client_by_id(id)
end

--- Runs `fn(client)` once the client is initialized.
local function with_client(fn)
  local client = M.ensure_client()
  if not client then
    return
  end
  if client.initialized then
    fn(client)
  else
    table.insert(M.state.pending, fn)
  end
end

--- Runs a bridge command (workspace/executeCommand); `done(result)` on success. Errors are
--- shown (unless the bridge already showed them).
function M.exec(command, arguments, done)
  with_client(function(client)
    local params = { command = command, arguments = arguments or {} }
    c_request(client, "workspace/executeCommand", params, function(err, result)
      if err then
        -- The bridge shows its errors itself (window/showMessage, which may arrive just
        -- after this answer): show this one only if it has not.
        local message = err.message or tostring(err)
        local asked = now()
        vim.defer_fn(function()
          local shown = M.state.shown[message]
          if not shown or shown + 1000 < asked then
            notify(message:match("^duet") and message or ("duet: " .. message), vim.log.levels.ERROR)
          end
        end, 500)
        return
      end
      if done then
        done(result)
      end
    end, nil)
  end)
end

-- ------------------------------------------------------------------------------------------
-- Our cursor.

local cursor_timer_pending = false
local cursor_last_sent = 0

local function position_of(bufnr, row, col, encoding)
  local ok, character = pcall(vim.lsp.util.character_offset, bufnr, row, col, encoding)
  return { line = row, character = ok and character or col }
end

--- Sends our cursor (and the selection's other end in visual mode) as `duet/cursor`.
function M.send_cursor()
  local client = M.client()
  local status = M.state.status
  if not client or not client.initialized or not status or status.state == "idle" then
    return
  end
  local bufnr = api.nvim_get_current_buf()
  if not vim.lsp.buf_is_attached(bufnr, client.id) then
    return
  end
  local encoding = client.offset_encoding or "utf-16"
  local cursor = api.nvim_win_get_cursor(0)
  local params = {
    uri = vim.uri_from_bufnr(bufnr),
    position = position_of(bufnr, cursor[1] - 1, cursor[2], encoding),
  }
  local mode = api.nvim_get_mode().mode
  if mode:match("^[vV\22]") then
    local v = vim.fn.getpos("v")
    params.anchor = position_of(bufnr, v[2] - 1, v[3] - 1, encoding)
  end
  local key = vim.json.encode(params)
  if key == M.state.last_cursor then
    return
  end
  M.state.last_cursor = key
  c_notify(client, "duet/cursor", params)
end

--- Throttled: at most one `duet/cursor` per `cursor_throttle_ms`, the last position wins.
local function cursor_moved()
  if cursor_timer_pending or not M.state.client_id then
    return
  end
  local wait = cursor_last_sent + M.config.cursor_throttle_ms - now()
  if wait <= 0 then
    cursor_last_sent = now()
    M.send_cursor()
    return
  end
  cursor_timer_pending = true
  vim.defer_fn(function()
    cursor_timer_pending = false
    cursor_last_sent = now()
    M.send_cursor()
  end, wait)
end

-- ------------------------------------------------------------------------------------------
-- Undo and redo of your own edits.

--- Whether `bufnr` is shared in a room right now.
local function shared_in_room(bufnr)
  local client, status = M.client(), M.state.status
  return client ~= nil and status ~= nil and status.state ~= "idle" and vim.lsp.buf_is_attached(bufnr, client.id)
end

--- Asks the bridge to undo (`duet.undo`) or redo (`duet.redo`) `count` of your own edits in
--- `bufnr`: it changes the text for everyone, leaves peers' edits alone and puts the cursor
--- where the change was (or says there is nothing of yours to undo).
local function own_history(command, bufnr, count)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if not shared_in_room(bufnr) then
    notify("duet: this buffer is not shared in a room", vim.log.levels.WARN)
    return
  end
  M.exec(command, { vim.uri_from_bufnr(bufnr), count or 1 })
end

function M.undo(bufnr, count)
  own_history("duet.undo", bufnr, count)
end

function M.redo(bufnr, count)
  own_history("duet.redo", bufnr, count)
end

local own_keys = {
  { lhs = "u", native = "u", fn = M.undo, desc = "duet: undo your own edits" },
  { lhs = "<C-r>", native = "\18", fn = M.redo, desc = "duet: redo your own edits" },
}

--- `u` and `<C-r>` (with a count) in a shared buffer: your own edits while in a room,
--- Neovim's undo otherwise.
local function map_own_keys(bufnr)
  for _, key in ipairs(own_keys) do
    vim.keymap.set("n", key.lhs, function()
      local count = vim.v.count1
      if shared_in_room(bufnr) then
        key.fn(bufnr, count)
      else
        vim.cmd("normal! " .. count .. key.native)
      end
    end, { buffer = bufnr, desc = key.desc })
  end
end

-- ------------------------------------------------------------------------------------------
-- Peers and following.

function M.find_peer_by_id(id)
  for _, peer in ipairs(M.state.peers) do
    if peer.clientId == id then
      return peer
    end
  end
  return nil
end

--- A peer by name (exact, then unique prefix, case-insensitive) or clientId.
function M.find_peer(query)
  query = vim.trim(query or "")
  local lower = query:lower()
  local prefixed = {}
  for _, peer in ipairs(M.state.peers) do
    if tostring(peer.clientId) == query or (peer.name or ""):lower() == lower then
      return peer
    end
    if (peer.name or ""):lower():sub(1, #lower) == lower then
      table.insert(prefixed, peer)
    end
  end
  if #prefixed == 1 then
    return prefixed[1]
  end
  return nil, #prefixed > 1 and "ambiguous" or nil
end

function M.follow(query)
  if not query or vim.trim(query) == "" then
    if M.state.following then
      M.unfollow()
    else
      notify("duet: :DuetFollow {peer} (see :DuetPeers)")
    end
    return
  end
  local peer, why = M.find_peer(query)
  if not peer then
    notify(
      ("duet: %s peer named %q (see :DuetPeers)"):format(why == "ambiguous" and "more than one" or "no", query),
      vim.log.levels.WARN
    )
    return
  end
  M.state.following, M.state.follow_name = peer.clientId, peer.name
  M.go_to(peer)
  notify(("duet: following %s (:DuetUnfollow to stop)"):format(peer.name))
end

--- Puts our cursor on the peer's: in the buffer of their file if it is loaded, else the bridge
--- opens their file (creating it from the room's text if the folder lacks it).
function M.go_to(peer)
  local client = M.client()
  if not peers.jump(peer, client and client.offset_encoding or "utf-16") and peer.path then
    M.exec("duet.jump", { peer.clientId })
  end
end

--- :DuetJump [peer]: to a peer's cursor, once (no argument: the only peer, or pick one).
function M.jump(query)
  if query and vim.trim(query) ~= "" then
    local peer, why = M.find_peer(query)
    if peer then
      M.go_to(peer)
    else
      notify(
        ("duet: %s peer named %q (see :DuetPeers)"):format(why == "ambiguous" and "more than one" or "no", query),
        vim.log.levels.WARN
      )
    end
    return
  end
  if #M.state.peers == 0 then
    notify("duet: nobody else is in the room")
  elseif #M.state.peers == 1 then
    M.go_to(M.state.peers[1])
  else
    vim.ui.select(M.state.peers, {
      prompt = "duet: jump to",
      format_item = function(peer)
        return ("%s  %s"):format(peer.name, M.where(peer))
      end,
    }, function(peer)
      if peer then
        M.go_to(peer)
      end
    end)
  end
end

--- :DuetFiles: the room's files, to pick one to open (one your folder lacks is created with
--- the room's text).
function M.files()
  M.exec("duet.status", {}, function(status)
    local files = type(status) == "table" and type(status.files) == "table" and status.files or {}
    if #files == 0 then
      notify(status and status.state ~= "idle" and "duet: the room has no files" or "duet: not in a room")
      return
    end
    local root = M.root()
    vim.ui.select(files, {
      prompt = ("duet: open a file of room %s"):format(tostring(status.room):sub(1, 8)),
      format_item = function(path)
        local here = (vim.uv or vim.loop).fs_stat(root .. "/" .. path) ~= nil
        return here and path or (path .. "  (not in your folder yet)")
      end,
    }, function(path)
      if path then
        M.exec("duet.openFile", { path })
      end
    end)
  end)
end

function M.unfollow(quiet)
  if M.state.following and not quiet then
    notify(("duet: no longer following %s"):format(M.state.follow_name or "the peer"))
  end
  M.state.following, M.state.follow_name = nil, nil
end

-- ------------------------------------------------------------------------------------------
-- Commands.

local function relative(uri)
  local ok, fname = pcall(vim.uri_to_fname, uri)
  if not ok then
    return uri
  end
  local root = M.root()
  if fname:sub(1, #root + 1) == root .. "/" then
    return fname:sub(#root + 2)
  end
  return fname
end

function M.create(server)
  server = (server and server ~= "") and server or M.config.server
  M.exec("duet.createRoom", server and { server } or {}, function(result)
    local invite = result and result.invite
    if not invite then
      return
    end
    M.state.last_invite = invite
    vim.fn.setreg('"', invite)
    local registers = { '"' }
    if vim.fn.has("clipboard") == 1 and pcall(vim.fn.setreg, "+", invite) then
      table.insert(registers, 1, "+")
    end
    notify(("duet: invite copied to register %s: %s"):format(table.concat(registers, " and "), invite))
  end)
end

function M.join(invite)
  if not invite or vim.trim(invite) == "" then
    notify("duet: :DuetJoin {invite}  (ws://HOST:PORT/ws/<room>?token=<token>)", vim.log.levels.ERROR)
    return
  end
  M.exec("duet.joinRoom", { vim.trim(invite) })
end

function M.leave()
  M.exec("duet.leaveRoom", {})
end

--- :DuetStatus: the bridge's status (the room, the server, the connection and since when,
--- the peers and where they are, the files, the invite) in a floating window.
function M.show_status()
  if not M.client() then
    messages.show({ "duet: not running (it starts with the first file of the workspace " .. M.root() .. ")" }, "status")
    return
  end
  M.state.quiet_status_until = now() + 3000
  M.exec("duet.status", {}, function(result)
    local text = type(result) == "table" and result.text or "duet: no status"
    messages.show(vim.split(text, "\n", { plain = true, trimempty = true }), "status")
  end)
end

--- Where a peer is: "file:line:col", or their file when it is not open here.
function M.where(peer)
  if peer.uri and peer.range and peers.buf_for_uri(peer.uri) then
    local s = peer.range["end"] or peer.range.start
    return ("%s:%d:%d"):format(relative(peer.uri), s.line + 1, s.character + 1)
  end
  if peer.path then
    local line = peer.range and (" line " .. ((peer.range["end"] or peer.range.start).line + 1)) or ""
    return ("%s%s (not open here)"):format(peer.path, line)
  end
  return "(no file open)"
end

function M.peer_lines()
  local status = M.state.status
  if not status or status.state == "idle" then
    return { "duet: not in a room" }
  end
  local list = M.state.peers
  if #list == 0 then
    return { "duet: no other peers in the room" }
  end
  local lines = { ("duet: %d peer%s"):format(#list, #list == 1 and "" or "s") }
  for _, peer in ipairs(list) do
    local where = M.where(peer)
    local mark = M.state.following == peer.clientId and "  (following)" or ""
    table.insert(lines, ("  %s  %s  %s%s"):format(peer.name, peer.color or "", where, mark))
  end
  return lines
end

function M.show_peers()
  messages.show(M.peer_lines(), "peers")
end

--- :DuetMessages: every message kept, in a floating window; "clear" forgets them.
local function show_messages(arg)
  if arg == "clear" then
    messages.clear()
  else
    messages.show(messages.lines(), "messages")
  end
end

--- A statusline component: "duet: 3f2a1b9c · 2 peers", "duet: offline", "duet: connecting",
--- or "" when not in a room.
function M.statusline()
  local status = M.state.status
  if not status or status.state == "idle" or not M.state.client_id then
    return ""
  end
  if status.state == "offline" then
    return "duet: offline"
  end
  if status.state == "connecting" then
    return "duet: connecting"
  end
  local n = M.state.peer_count or 0
  return ("duet: %s · %d %s"):format(tostring(status.room or ""):sub(1, 8), n, n == 1 and "peer" or "peers")
end

local function complete_peers(arg_lead)
  local names = {}
  for _, peer in ipairs(M.state.peers) do
    if (peer.name or ""):lower():sub(1, #arg_lead) == arg_lead:lower() then
      table.insert(names, peer.name)
    end
  end
  return names
end

local function create_commands()
  local command = api.nvim_create_user_command
  command("DuetCreate", function(o)
    M.create(o.args)
  end, { nargs = "?", desc = "duet: create a room with the open files and join it" })
  command("DuetJoin", function(o)
    M.join(o.args)
  end, { nargs = 1, desc = "duet: join a room by its invite" })
  command("DuetLeave", M.leave, { nargs = 0, desc = "duet: leave the room" })
  command("DuetStatus", M.show_status, { nargs = 0, desc = "duet: the room, the connection, the peers" })
  command("DuetPeers", M.show_peers, { nargs = 0, desc = "duet: list the peers and where they are" })
  command("DuetFollow", function(o)
    M.follow(o.args)
  end, { nargs = "?", complete = complete_peers, desc = "duet: follow a peer's cursor (no argument: stop)" })
  command("DuetUnfollow", function()
    M.unfollow()
  end, { nargs = 0, desc = "duet: stop following" })
  command("DuetJump", function(o)
    M.jump(o.args)
  end, { nargs = "?", complete = complete_peers, desc = "duet: go to a peer's cursor, once" })
  command("DuetFiles", M.files, { nargs = 0, desc = "duet: the room's files; pick one to open it" })
  command("DuetUndo", function(o)
    M.undo(0, o.count)
  end, { count = 1, desc = "duet: undo [count] of your own edits in this buffer" })
  command("DuetRedo", function(o)
    M.redo(0, o.count)
  end, { count = 1, desc = "duet: redo [count] of your own edits in this buffer" })
  command("DuetHistory", function(o)
    history.history(o.args)
  end, { nargs = "?", desc = "duet: pick a version of the room and see this file's diff against it" })
  command("DuetRestore", function(o)
    history.restore(o.bang, o.args)
  end, { nargs = "?", bang = true, desc = "duet: restore this file as in the version shown (!: every file)" })
  command("DuetSave", function(o)
    history.save(o.args)
  end, { nargs = "?", desc = "duet: take a version of the room now, with a label" })
  command("DuetAway", function(o)
    history.away(o.args)
  end, { nargs = "?", desc = "duet: what changed while you were away, as diffs" })
  command("DuetMessages", function(o)
    show_messages(o.args)
  end, {
    nargs = "?",
    complete = function()
      return { "clear" }
    end,
    desc = "duet: every message so far (clear: forget them)",
  })
end

-- ------------------------------------------------------------------------------------------
-- Setup.

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  if type(M.config.cmd) == "string" then
    M.config.cmd = { M.config.cmd }
  end
  M.state.root = nil
  M.state.missing_reported = false
  M.did_setup = true
  peers.setup()
  create_commands()

  local group = api.nvim_create_augroup("duet", { clear = true })
  api.nvim_create_autocmd({ "BufReadPost", "BufNewFile", "FileType" }, {
    group = group,
    callback = function(ev)
      M.attach(ev.buf)
    end,
  })
  if M.config.undo then
    api.nvim_create_autocmd("LspAttach", {
      group = group,
      callback = function(ev)
        local client = vim.lsp.get_client_by_id(ev.data.client_id)
        if client and client.name == CLIENT_NAME then
          map_own_keys(ev.buf)
        end
      end,
    })
  end
  api.nvim_create_autocmd({ "CursorMoved", "CursorMovedI", "ModeChanged" }, {
    group = group,
    callback = cursor_moved,
  })
  api.nvim_create_autocmd("BufEnter", {
    group = group,
    callback = function()
      if M.state.client_id then
        cursor_moved()
      end
    end,
  })
  api.nvim_create_autocmd("ColorScheme", {
    group = group,
    callback = function()
      peers.reset_highlights()
      local client = M.client()
      peers.render(M.state.peers, client and client.offset_encoding or "utf-16", M.config)
    end,
  })

  -- Buffers already open when setup runs (e.g. `nvim file` with a lazy-loaded plugin).
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    M.attach(bufnr)
  end
  -- Joining at start without any file open (e.g. `invite` set, `nvim` alone).
  if M.config.invite and not M.client() then
    M.ensure_client()
  end
end

return M
