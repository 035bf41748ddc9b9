-- Neovim config for tests/tests/editor_neovim.rs: loads the plugin from editors/neovim as a
-- user's config would (runtimepath + setup). Reads:
--   DUET_PLUGIN_DIR   editors/neovim
--   DUET_SETUP        JSON options for require("duet").setup()
-- Neovim's own vim.notify stays: the tests read the plugin's messages
-- (require('duet.messages').history).

vim.o.swapfile = false
vim.o.shada = ''
vim.o.more = false
vim.o.shortmess = 'aoOstTWIcCFS'
vim.o.laststatus = 2
vim.o.statusline = "%f %{%v:lua.require'duet'.statusline()%}"

vim.opt.runtimepath:prepend(assert(vim.env.DUET_PLUGIN_DIR, 'DUET_PLUGIN_DIR'))

if vim.env.DUET_NVIM_LSP_LOG then
  vim.lsp.log.set_level(vim.env.DUET_NVIM_LSP_LOG)
end

local opts = {}
if vim.env.DUET_SETUP and vim.env.DUET_SETUP ~= '' then
  opts = vim.json.decode(vim.env.DUET_SETUP)
end
require('duet').setup(opts)
