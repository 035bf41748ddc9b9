-- What duet tells you. No message may take a key you type: Neovim's own vim.notify echoes on
-- the command line, and a message wider than the room left there (or of several lines) opens a
-- hit-enter prompt that swallows the next key (a space typed right after the offline notice).
-- So that vim.notify gets one line that fits; a notification plugin that replaced vim.notify
-- (nvim-notify, noice, fidget, mini.notify) gets the whole text. Every message is kept whole
-- for :DuetMessages. What you ask to see (:DuetStatus, :DuetPeers, :DuetMessages) opens in a
-- floating window, which takes no key either.

local Msg = {}

--- How many messages :DuetMessages keeps.
Msg.limit = 200

--- Every message, oldest first: { time = "HH:MM:SS", level = vim.log.levels.*, msg = text }.
Msg.history = {}

local level_names = {
  [vim.log.levels.ERROR] = "ERROR",
  [vim.log.levels.WARN] = "WARN",
  [vim.log.levels.INFO] = "INFO",
  [vim.log.levels.DEBUG] = "DEBUG",
  [vim.log.levels.TRACE] = "TRACE",
}

--- Whether vim.notify is Neovim's own, which echoes on the command line.
local function echoing_notify()
  local info = debug.getinfo(vim.notify, "S")
  return info ~= nil and info.source:match("vim/_editor%.lua$") ~= nil
end

--- The longest start of `text` that, followed by `tail`, is at most `width` cells wide.
local function cut(text, width, tail)
  local room = width - vim.fn.strdisplaywidth(tail)
  local low, high = 0, vim.fn.strchars(text)
  while low < high do
    local mid = math.floor((low + high + 1) / 2)
    if vim.fn.strdisplaywidth(vim.fn.strcharpart(text, 0, mid)) <= room then
      low = mid
    else
      high = mid - 1
    end
  end
  return vim.fn.strcharpart(text, 0, low) .. tail
end

--- `msg` as one line of at most `width` cells: its first line, cut short (with a pointer to
--- :DuetMessages when there is room for one) if it does not fit or more lines follow.
function Msg.fit(msg, width)
  local first = (msg:match("^[^\n]*"):gsub("%c", " "))
  if first == msg and vim.fn.strdisplaywidth(first) <= width then
    return first
  end
  local hint = "… (:DuetMessages)"
  local tail = width >= 3 * vim.fn.strdisplaywidth(hint) and hint or "…"
  return cut(first, width, tail)
end

--- Keeps `msg` and shows it (see the top of this file).
function Msg.notify(msg, level)
  level = level or vim.log.levels.INFO
  table.insert(Msg.history, { time = os.date("%H:%M:%S"), level = level, msg = msg })
  if #Msg.history > Msg.limit then
    table.remove(Msg.history, 1)
  end
  if echoing_notify() then
    local width = vim.v.echospace
    if width < 2 then
      return -- no room at all on the command line: :DuetMessages has it
    end
    msg = Msg.fit(msg, width)
  end
  vim.notify(msg, level, { title = "duet" })
end

function Msg.clear()
  Msg.history = {}
end

--- Shows `lines` in a floating window at the cursor, like a hover: it closes when the cursor
--- moves, and showing the same `kind` again enters it (to copy from it; `q` closes it).
function Msg.show(lines, kind)
  vim.lsp.util.open_floating_preview(lines, "", {
    border = "rounded",
    focus_id = "duet_" .. kind,
    max_width = math.max(20, vim.o.columns - 4),
    max_height = math.max(3, vim.o.lines - 4),
  })
end

--- Every message kept, as lines (continuation lines of a message indented).
function Msg.lines()
  if #Msg.history == 0 then
    return { "duet: no messages" }
  end
  local lines = {}
  for _, entry in ipairs(Msg.history) do
    local prefix = ("%s %-5s "):format(entry.time, level_names[entry.level] or tostring(entry.level))
    for i, line in ipairs(vim.split(entry.msg, "\n", { plain = true })) do
      table.insert(lines, (i == 1 and prefix or (" "):rep(#prefix)) .. line)
    end
  end
  return lines
end

return Msg
