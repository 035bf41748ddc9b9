-- Minimal Neovim (0.11) config for duet's end-to-end tests: starts `duet-lsp` for every file
-- buffer, as a user's config would. Driven by tests/neovim/driver.py; it reads:
--   DUET_LSP                the bridge's command (default: `duet-lsp` on PATH)
--   DUET_NVIM_DEBOUNCE_MS   flags.debounce_text_changes; unset or "default" keeps Neovim's own
--                           default (150 ms)
-- The bridge itself reads DUET_INVITE etc. from the environment it inherits from Neovim.
-- The position encoding is left to negotiation: Neovim offers utf-8, utf-16 and utf-32 and uses
-- what the server answers.

vim.o.swapfile = false
vim.o.shada = ''
vim.o.more = false
vim.o.shortmess = 'aoOstTWIcCFS'

local flags = {}
local debounce = vim.env.DUET_NVIM_DEBOUNCE_MS
if debounce and debounce ~= '' and debounce ~= 'default' then
  flags.debounce_text_changes = assert(tonumber(debounce), 'DUET_NVIM_DEBOUNCE_MS: a number')
end

if vim.env.DUET_NVIM_LSP_LOG then
  vim.lsp.log.set_level(vim.env.DUET_NVIM_LSP_LOG)
end

vim.lsp.config('duet', {
  cmd = { vim.env.DUET_LSP or 'duet-lsp' },
  -- Every file buffer, whatever its filetype: the bridge syncs all open files.
  filetypes = nil,
  -- The workspace is Neovim's working directory (the driver starts it there).
  root_dir = vim.fn.getcwd(),
  flags = flags,
  -- What the bridge tells about the room, kept for the driver to read.
  handlers = {
    ['duet/status'] = function(_, result)
      vim.g.duet_status = result
    end,
    ['duet/peers'] = function(_, result)
      vim.g.duet_peers = result
    end,
  },
})
vim.lsp.enable('duet')
