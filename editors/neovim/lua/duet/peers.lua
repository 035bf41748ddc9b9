-- Peers' cursors as extmarks: a bar and the peer's name in the peer's colour at their cursor,
-- their selection underlined. One highlight group per colour: DuetPeer_<rrggbb> (the name and
-- the bar), DuetPeerLabel_<rrggbb> (reverse: the name on the colour), DuetPeerSelection_<rrggbb>.

local api = vim.api
local has011 = vim.fn.has("nvim-0.11") == 1

local P = {}

P.ns = api.nvim_create_namespace("duet_peers")

local defined = {}

function P.setup()
  api.nvim_set_hl(0, "DuetPeer", { default = true, link = "Comment" })
end

function P.reset_highlights()
  defined = {}
end

--- "#abc" / "#aabbcc" -> "aabbcc"; anything else -> nil.
local function hex_of(color)
  if type(color) ~= "string" then
    return nil
  end
  local six = color:match("^#(%x%x%x%x%x%x)$")
  if six then
    return six:lower()
  end
  local r, g, b = color:match("^#(%x)(%x)(%x)$")
  if r then
    return (r .. r .. g .. g .. b .. b):lower()
  end
  return nil
end

--- Black or white, whichever reads better on the colour.
local function contrast(hex)
  local r, g, b = tonumber(hex:sub(1, 2), 16), tonumber(hex:sub(3, 4), 16), tonumber(hex:sub(5, 6), 16)
  return (0.299 * r + 0.587 * g + 0.114 * b) > 150 and "#000000" or "#ffffff"
end

--- The highlight groups of a colour: name/bar, label, selection.
function P.groups(color)
  local hex = hex_of(color) or "888888"
  local name = "DuetPeer_" .. hex
  if not defined[hex] then
    api.nvim_set_hl(0, name, { fg = "#" .. hex, bold = true, default = true })
    api.nvim_set_hl(0, "DuetPeerLabel_" .. hex, { fg = contrast(hex), bg = "#" .. hex, bold = true, default = true })
    api.nvim_set_hl(0, "DuetPeerSelection_" .. hex, { underline = true, sp = "#" .. hex, default = true })
    defined[hex] = true
  end
  return name, "DuetPeerLabel_" .. hex, "DuetPeerSelection_" .. hex
end

--- The loaded buffer showing `uri`, or nil.
function P.buf_for_uri(uri)
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) and api.nvim_buf_get_name(bufnr) ~= "" and vim.uri_from_bufnr(bufnr) == uri then
      return bufnr
    end
  end
  return nil
end

--- Byte column of an LSP `character` on a line, in the client's position encoding.
local function byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if has011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  if not ok or not col then
    return #line
  end
  return math.min(col, #line)
end

--- An LSP position -> (row, byte col) in `bufnr`, clamped to the buffer.
function P.to_buf_pos(bufnr, position, encoding)
  local count = api.nvim_buf_line_count(bufnr)
  local row = math.max(0, math.min(position.line or 0, count - 1))
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  if (position.line or 0) > count - 1 then
    return row, #line
  end
  return row, byte_col(line, position.character or 0, encoding)
end

function P.clear()
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) then
      api.nvim_buf_clear_namespace(bufnr, P.ns, 0, -1)
    end
  end
end

local function clean(name)
  name = tostring(name or "anonymous"):gsub("%c", " ")
  if #name > 40 then
    name = name:sub(1, 40) .. "…"
  end
  return name
end

--- Draws every peer's cursor (and selection) in the buffers that show their file.
function P.render(peers, encoding, config)
  P.clear()
  local position = (config and config.label_position) or "inline"
  for _, peer in ipairs(peers or {}) do
    local bufnr = peer.uri and peer.range and P.buf_for_uri(peer.uri)
    if bufnr then
      local name_hl, label_hl, selection_hl = P.groups(peer.color)
      local srow, scol = P.to_buf_pos(bufnr, peer.range.start, encoding)
      local erow, ecol = P.to_buf_pos(bufnr, peer.range["end"] or peer.range.start, encoding)
      if srow ~= erow or scol ~= ecol then
        pcall(api.nvim_buf_set_extmark, bufnr, P.ns, srow, scol, {
          end_row = erow,
          end_col = ecol,
          hl_group = selection_hl,
          priority = 150,
        })
      end
      local label = clean(peer.name)
      local virt_text
      if position == "inline" then
        virt_text = { { "▏", name_hl }, { label, label_hl } }
      else
        virt_text = { { "▏" .. label, name_hl } }
      end
      local opts = {
        virt_text = virt_text,
        virt_text_pos = position,
        hl_mode = "combine",
        priority = 200,
        right_gravity = false,
      }
      -- The bar sits where the peer's caret is; the name follows it.
      local ok = pcall(api.nvim_buf_set_extmark, bufnr, P.ns, erow, ecol, opts)
      if not ok and position == "inline" then
        opts.virt_text_pos = "eol" -- Neovim < 0.10 has no inline virtual text
        pcall(api.nvim_buf_set_extmark, bufnr, P.ns, erow, ecol, opts)
      end
    end
  end
end

--- Moves our cursor to a peer's. Returns false if their file is not open here.
function P.jump(peer, encoding)
  if not (peer.uri and peer.range) then
    return false
  end
  local bufnr = P.buf_for_uri(peer.uri)
  if not bufnr then
    return false
  end
  if api.nvim_get_current_buf() ~= bufnr then
    local target
    for _, win in ipairs(api.nvim_tabpage_list_wins(0)) do
      if api.nvim_win_get_buf(win) == bufnr then
        target = win
        break
      end
    end
    if target then
      api.nvim_set_current_win(target)
    elseif not pcall(api.nvim_win_set_buf, 0, bufnr) then
      return false
    end
  end
  local row, col = P.to_buf_pos(bufnr, peer.range["end"] or peer.range.start, encoding)
  local current = api.nvim_win_get_cursor(0)
  if current[1] ~= row + 1 or current[2] ~= col then
    pcall(api.nvim_win_set_cursor, 0, { row + 1, col })
  end
  return true
end

return P
