-- Ghost text drawn by the plugin itself: for Neovim without built-in inline completion (0.10,
-- 0.11), or when `ghost = "virtual"`. After a typing pause in insert mode it sends
-- textDocument/inlineCompletion, shows the first item as virtual text at the cursor, and
-- inserts it on the accept key; moving, typing or the dismiss key clears it.
local M = {}

local ns = vim.api.nvim_create_namespace("assistant_ghost")
local state = {} -- bufnr -> { timer, request_id, item, changedtick }

local function clear(bufnr)
  local s = state[bufnr]
  if not s then
    return
  end
  vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  s.item = nil
  if s.request_id and s.client then
    s.client:cancel_request(s.request_id)
    s.request_id = nil
  end
end

local function show(bufnr, text)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], "Comment" } })
  end
  vim.api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, {
    virt_text = { { lines[1], "Comment" } },
    virt_text_pos = "inline",
    virt_lines = virt_lines,
    hl_mode = "combine",
  })
end

--- Ask for a completion at the cursor now, and show it when it arrives.
function M.request(bufnr)
  local s = state[bufnr]
  local client = require("assistant").client(bufnr)
  if not s or not client then
    return
  end
  clear(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 2 }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  s.client = client
  s.pos = vim.api.nvim_win_get_cursor(0)
  local _, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    s.request_id = nil
    if err or not result or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return
    end
    local items = result.items or result
    local item = items[1]
    if not item or item.insertText == "" then
      return
    end
    local text = type(item.insertText) == "string" and item.insertText or item.insertText.value
    s.item = { text = text, tick = tick }
    if vim.api.nvim_get_mode().mode:sub(1, 1) == "i" then
      show(bufnr, text)
    end
  end, bufnr)
  s.request_id = id
end

--- Insert the shown completion at the cursor; false when there is none.
function M.accept(bufnr)
  local s = state[bufnr]
  if not s or not s.item or vim.api.nvim_buf_get_changedtick(bufnr) ~= s.item.tick then
    return false
  end
  local text = s.item.text
  clear(bufnr)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
  local last = #lines == 1 and col + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last })
  return true
end

--- The completion shown in a buffer (0: the current one), or nil.
function M.current(bufnr)
  if bufnr == nil or bufnr == 0 then
    bufnr = vim.api.nvim_get_current_buf()
  end
  local s = state[bufnr]
  return s and s.item and s.item.text or nil
end

function M.attach(bufnr, config)
  if state[bufnr] then
    return
  end
  state[bufnr] = {}
  local group = vim.api.nvim_create_augroup("assistant_ghost_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "InsertEnter" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      clear(bufnr)
      local s = state[bufnr]
      if s.timer then
        s.timer:stop()
      end
      s.timer = vim.defer_fn(function()
        M.request(bufnr)
      end, config.debounce_ms)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "CursorMovedI", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function(ev)
      local s = state[bufnr]
      if ev.event == "CursorMovedI" and vim.deep_equal(s.pos, vim.api.nvim_win_get_cursor(0)) then
        return -- still where the completion was asked for
      end
      clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "BufWipeout", "LspDetach" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      clear(bufnr)
      state[bufnr] = nil
    end,
  })
  local keys = config.keys
  if keys.accept then
    vim.keymap.set("i", keys.accept, function()
      if not M.current(bufnr) then
        return vim.api.nvim_replace_termcodes(keys.accept, true, false, true)
      end
      -- an <expr> mapping may not change the buffer itself (textlock): insert right after it
      vim.schedule(function()
        M.accept(bufnr)
      end)
      return ""
    end, { buffer = bufnr, expr = true, desc = "assistant: accept the completion" })
  end
  if keys.dismiss then
    vim.keymap.set("i", keys.dismiss, function()
      clear(bufnr)
    end, { buffer = bufnr, desc = "assistant: dismiss the completion" })
  end
end

return M
