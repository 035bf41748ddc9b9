-- Neovim config for tests/tests/editor_neovim.rs: loads the plugin from editors/neovim as a
-- user's config would (runtimepath + setup). Reads:
--   DUET_PLUGIN_DIR   editors/neovim
--   DUET_SETUP        JSON options for require("duet").setup()
-- Every vim.notify is also kept in vim.g.duet_notes ({msg, level}) for the tests to read.

vim.o.swapfile = false
vim.o.shada = ''
vim.o.more = false
vim.o.shortmess = 'aoOstTWIcCFS'
vim.o.laststatus = 2
vim.o.statusline = "%f %{%v:lua.require'duet'.statusline()%}"

vim.opt.runtimepath:prepend(assert(vim.env.DUET_PLUGIN_DIR, 'DUET_PLUGIN_DIR'))

vim.g.duet_notes = {}
local notify = vim.notify
vim.notify = function(msg, level, opts)
  local notes = vim.g.duet_notes
  table.insert(notes, { msg = tostring(msg), level = level or vim.log.levels.INFO })
  vim.g.duet_notes = notes
  return notify(msg, level, opts)
end

if vim.env.DUET_NVIM_LSP_LOG then
  vim.lsp.log.set_level(vim.env.DUET_NVIM_LSP_LOG)
end

local opts = {}
if vim.env.DUET_SETUP and vim.env.DUET_SETUP ~= '' then
  opts = vim.json.decode(vim.env.DUET_SETUP)
end
require('duet').setup(opts)
