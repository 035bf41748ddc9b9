-- duet for Neovim: the room's history. :DuetHistory picks a version and shows the current file
-- beside its text then, in diff mode; :DuetRestore restores it (or, with !, every file of that
-- version); :DuetSave takes a version with a label; :DuetAway shows what changed while you were
-- away from the room, as diffs. Everything goes through the bridge's commands (duet.versions,
-- duet.versionText, duet.restore, duet.saveVersion, duet.away, duet.awayText).

local api = vim.api

local M = {}

--- The diff this tab shows: { version = n, path = "a.py", scratch = bufnr, win = winid }.
local function shown()
  return vim.t.duet_history
end

--- `#12  2026-12-07 23:41  ann, bob  main.py, notes.md (added)  "label"`.
function M.describe(version)
  local files = {}
  for _, f in ipairs(version.files or {}) do
    table.insert(files, f.change == "changed" and f.path or ("%s (%s)"):format(f.path, f.change))
  end
  local authors = #(version.authors or {}) > 0 and table.concat(version.authors, ", ") or "-"
  local line = ("#%d  %s  %s  %s"):format(
    version.id,
    os.date("%Y-%m-%d %H:%M", math.floor((version.created_at or 0) / 1000)),
    authors,
    #files > 0 and table.concat(files, ", ") or "no change"
  )
  if type(version.label) == "string" then
    line = line .. ('  "%s"'):format(version.label)
  end
  return line
end

--- The workspace path of a buffer, or nil when it is not in the workspace.
local function path_of(bufnr)
  local duet = require("duet")
  local name = api.nvim_buf_get_name(bufnr)
  local root = duet.root()
  if name:sub(1, #root + 1) == root .. "/" then
    return name:sub(#root + 2)
  end
end

--- Closes the diff this tab shows, if any.
function M.close()
  local diff = shown()
  if not diff then
    return
  end
  vim.t.duet_history = nil
  if api.nvim_win_is_valid(diff.win) then
    api.nvim_win_close(diff.win, true)
  end
  if api.nvim_buf_is_valid(diff.scratch) then
    api.nvim_buf_delete(diff.scratch, { force = true })
  end
  vim.cmd("diffoff!")
end

--- Shows `text` (`title` names it) in a read-only split beside the current window, both in
--- diff mode. Returns the split's buffer and window.
local function diff_split(text, title)
  local source = api.nvim_get_current_win()
  local filetype = vim.bo.filetype
  vim.cmd("vertical leftabove new")
  local win, buf = api.nvim_get_current_win(), api.nvim_get_current_buf()
  local lines = vim.split(text, "\n", { plain = true })
  if lines[#lines] == "" then
    table.remove(lines)
  end
  api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].buftype = "nofile"
  vim.bo[buf].bufhidden = "wipe"
  vim.bo[buf].swapfile = false
  vim.bo[buf].modifiable = false
  vim.bo[buf].filetype = filetype
  pcall(api.nvim_buf_set_name, buf, title)
  vim.cmd("diffthis")
  api.nvim_set_current_win(source)
  vim.cmd("diffthis")
  return buf, win
end

--- Shows the current buffer beside its text at `version`.
function M.open(version, path)
  local duet = require("duet")
  path = path or path_of(0)
  if not path then
    duet.notify("duet: this buffer is not a file of the workspace", vim.log.levels.ERROR)
    return
  end
  duet.exec("duet.versionText", { version, path }, function(result)
    M.close()
    local scratch, win = diff_split(result.text, ("duet://version/%d/%s"):format(version, path))
    vim.t.duet_history = { version = version, path = path, scratch = scratch, win = win }
    duet.notify(("duet: %s as in version %d on the left; :DuetRestore restores it, :DuetRestore! every file"):format(path, version))
  end)
end

--- :DuetHistory [version]: picks a version (newest first), then shows the diff.
function M.history(arg)
  local version = tonumber(arg)
  if version then
    return M.open(version)
  end
  local path = path_of(0)
  require("duet").exec("duet.versions", { 50 }, function(result)
    local versions = result and result.versions or {}
    if #versions == 0 then
      require("duet").notify("duet: no versions yet")
      return
    end
    vim.ui.select(versions, { prompt = "duet: versions of the room", format_item = M.describe }, function(choice)
      if choice then
        M.open(choice.id, path)
      end
    end)
  end)
end

--- :DuetRestore[!] [version]: restores the file the diff shows (every file with !), as in the
--- version it shows (or the one named).
function M.restore(all, arg)
  local duet = require("duet")
  local diff = shown()
  local version = tonumber(arg) or (diff and diff.version)
  if not version then
    duet.notify("duet: :DuetHistory first (or :DuetRestore {version})", vim.log.levels.ERROR)
    return
  end
  local path = not all and (diff and diff.path or path_of(0)) or nil
  duet.exec("duet.restore", path and { version, path } or { version }, function()
    M.close()
  end)
end

--- :DuetSave [label]: takes a version now.
function M.save(label)
  require("duet").exec("duet.saveVersion", (label and label ~= "") and { label } or {})
end

--- Shows the current text of `path` beside its text when you left.
function M.away_diff(path)
  local duet = require("duet")
  duet.exec("duet.awayText", { path }, function(result)
    M.close()
    local bufnr = vim.fn.bufadd(duet.root() .. "/" .. path)
    vim.fn.bufload(bufnr)
    api.nvim_set_current_buf(bufnr)
    local before = type(result.text) == "string" and result.text or ""
    local scratch, win = diff_split(before, "duet://away/" .. path)
    vim.t.duet_history = { path = path, scratch = scratch, win = win }
  end)
end

--- :DuetAway [path]: what changed while you were away; picks a file and shows its diff.
function M.away(path)
  if path and path ~= "" then
    return M.away_diff(path)
  end
  require("duet").exec("duet.away", {}, function(result)
    local files = result and result.files or {}
    if #files == 0 then
      require("duet").notify("duet: nothing changed while you were away")
      return
    end
    vim.ui.select(files, {
      prompt = "duet: changed while you were away",
      format_item = function(f)
        return ("%s (%s)"):format(f.path, f.change)
      end,
    }, function(choice)
      if choice then
        M.away_diff(choice.path)
      end
    end)
  end)
end

--- `duet/away` from the bridge (it says what changed itself): how to see it.
function M.on_away(_, params)
  if params and #(params.files or {}) > 0 then
    require("duet").notify("duet: :DuetAway shows the changes as diffs")
  end
  return vim.NIL
end

return M
