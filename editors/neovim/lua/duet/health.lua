-- :checkhealth duet

local M = {}

local health = vim.health
local ok, warn, err, info = health.ok, health.warn, health.error, health.info

--- Asks a duet-lsp binary its version: an `initialize` request, then end of input (no
--- `initialized`, so it joins nothing). Returns the version, or nil and why.
local function bridge_version(cmd)
  local body = vim.json.encode({
    jsonrpc = "2.0",
    id = 1,
    method = "initialize",
    params = { processId = vim.NIL, rootUri = vim.NIL, capabilities = vim.empty_dict() },
  })
  local input = ("Content-Length: %d\r\n\r\n%s"):format(#body, body)
  local out, errout = "", ""
  local function frame()
    local length, rest = out:match("Content%-Length: (%d+)\r\n\r\n(.*)$")
    if length and #rest >= tonumber(length) then
      return rest:sub(1, tonumber(length))
    end
  end
  local okay, process = pcall(vim.system, cmd, {
    stdin = true,
    text = true,
    env = { DUET_INVITE = "", DUET_ROOM = "", DUET_LOG_FILE = "" },
    stdout = function(_, data)
      out = out .. (data or "")
    end,
    stderr = function(_, data)
      errout = errout .. (data or "")
    end,
  })
  if not okay then
    return nil, tostring(process)
  end
  process:write(input)
  -- Ending the input only once the answer is here: an early end of input cancels the request.
  vim.wait(5000, function()
    return frame() ~= nil
  end, 10)
  pcall(process.write, process, nil)
  local json = frame()
  if not json then
    pcall(process.kill, process, "sigkill")
    return nil, ("no answer to initialize: %s"):format(errout:sub(-300))
  end
  pcall(process.wait, process, 2000) -- it exits at the end of its input
  local decoded_ok, answer = pcall(vim.json.decode, json)
  if not decoded_ok or type(answer) ~= "table" or type(answer.result) ~= "table" then
    return nil, "unexpected answer: " .. json:sub(1, 300)
  end
  local server_info = answer.result.serverInfo or {}
  return server_info.version or "?", server_info.name
end

function M.check()
  health.start("duet")

  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.10") == 1 then
    ok("Neovim " .. version)
  else
    err("Neovim " .. version .. ": duet needs Neovim 0.10 or later")
  end

  local loaded, duet = pcall(require, "duet")
  if not loaded then
    err("require('duet') failed: " .. tostring(duet))
    return
  end
  if duet.did_setup then
    ok("setup() called; workspace root " .. duet.root())
  else
    warn("require('duet').setup() has not been called", { "Call it from your config (see :help duet-install)" })
  end

  local cmd = duet.config.cmd
  local exe = cmd and cmd[1]
  if not exe or vim.fn.executable(exe) ~= 1 then
    err(("duet-lsp not found: %s"):format(tostring(exe)), {
      "cargo install --path lsp (in the duet repository), or put target/release/duet-lsp on your PATH",
      "or set `cmd = { '/path/to/duet-lsp' }` in setup()",
    })
  else
    ok("duet-lsp found: " .. vim.fn.exepath(exe))
    local bridge, name = bridge_version(cmd)
    if bridge then
      ok(("duet-lsp version %s (%s)"):format(bridge, name or "duet-lsp"))
    else
      warn("could not ask duet-lsp its version: " .. tostring(name))
    end
  end

  local client = duet.client()
  if not client then
    info("client not running: it starts with the first file buffer inside the workspace, or :DuetJoin / :DuetCreate")
  else
    local buffers = vim.tbl_count(client.attached_buffers or {})
    ok(
      ("client running (id %d, position encoding %s, %d buffer%s, debounce %s ms)"):format(
        client.id,
        tostring(client.offset_encoding),
        buffers,
        buffers == 1 and "" or "s",
        tostring(client.flags and client.flags.debounce_text_changes)
      )
    )
    if client.server_info and client.server_info.version then
      ok("running duet-lsp version " .. client.server_info.version)
    end
  end

  local status = duet.state.status
  if not client then
    return
  elseif not status or status.state == "idle" then
    info("not in a room (:DuetJoin {invite} or :DuetCreate)")
  elseif status.state == "connected" then
    ok(("in room %s on %s, %d peer%s"):format(
      tostring(status.room),
      tostring(status.server),
      duet.state.peer_count,
      duet.state.peer_count == 1 and "" or "s"
    ))
  elseif status.state == "connecting" then
    warn(("connecting to room %s on %s"):format(tostring(status.room), tostring(status.server)), {
      "Is the server running and reachable? The bridge keeps trying; :DuetLeave stops it.",
    })
  else
    warn(("offline from room %s on %s: edits are kept and sync when the server is back"):format(
      tostring(status.room),
      tostring(status.server)
    ))
  end
end

return M
