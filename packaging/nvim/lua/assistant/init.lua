-- assistant.nvim: the local code assistant in Neovim.
--
-- require("assistant").setup({...}) starts `assistant lsp` for the buffers of the configured
-- filetypes (vim.lsp.config/vim.lsp.enable on Neovim >= 0.11, vim.lsp.start on 0.10) and shows
-- its completions as ghost text: Neovim >= 0.12's built-in inline completion where present,
-- else (or when `ghost = "virtual"`) this plugin's own virtual text, with accept and dismiss keys.
local M = {}

local defaults = {
  cmd = { "assistant", "lsp" },
  filetypes = {
    "python", "javascript", "javascriptreact", "typescript", "typescriptreact",
    "go", "rust", "java", "c", "cpp", "lua", "sh",
  },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  -- Sent as initializationOptions and workspace/didChangeConfiguration, section `assistant`.
  settings = {},
  -- "auto": built-in inline completion when Neovim has it, else virtual text; "builtin"; "virtual".
  ghost = "auto",
  keys = { accept = "<Tab>", dismiss = "<C-]>" },
  -- Milliseconds of typing pause before the virtual-text path asks for a completion.
  debounce_ms = 150,
}

M.config = vim.deepcopy(defaults)
M.state = { last_error = nil }

local function has_builtin_inline()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

function M.uses_builtin()
  if M.config.ghost == "virtual" then
    return false
  end
  return has_builtin_inline()
end

local function client_config()
  -- An empty Lua table would be sent as a JSON array; the server wants an object.
  local settings = next(M.config.settings) and M.config.settings or vim.empty_dict()
  return {
    name = "assistant",
    cmd = M.config.cmd,
    filetypes = M.config.filetypes,
    root_markers = M.config.root_markers,
    init_options = { assistant = settings },
    settings = { assistant = settings },
    on_exit = function(code, signal)
      if code ~= 0 then
        M.state.last_error = string.format("assistant lsp exited with code %d (signal %d)", code, signal or 0)
      end
    end,
  }
end

--- The running assistant client for a buffer, if any.
function M.client(bufnr)
  local clients = vim.lsp.get_clients({ bufnr = bufnr or 0, name = "assistant" })
  return clients[1]
end

local function map_keys(bufnr)
  local keys = M.config.keys
  if M.uses_builtin() then
    if keys.accept then
      vim.keymap.set("i", keys.accept, function()
        if not vim.lsp.inline_completion.get({ bufnr = bufnr }) then
          return vim.api.nvim_replace_termcodes(keys.accept, true, false, true)
        end
      end, { buffer = bufnr, expr = true, desc = "assistant: accept the completion" })
    end
    return
  end
  require("assistant.ghost").attach(bufnr, M.config)
end

local function on_attach(bufnr)
  if M.uses_builtin() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
  map_keys(bufnr)
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  local group = vim.api.nvim_create_augroup("assistant", { clear = true })
  vim.api.nvim_create_autocmd("LspAttach", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == "assistant" then
        on_attach(args.buf)
      end
    end,
  })
  if vim.lsp.config ~= nil and vim.lsp.enable ~= nil then
    vim.lsp.config("assistant", client_config())
    vim.lsp.enable("assistant")
  else
    vim.api.nvim_create_autocmd("FileType", {
      group = group,
      pattern = M.config.filetypes,
      callback = function(args)
        local cfg = client_config()
        cfg.root_dir = vim.fs.root(args.buf, M.config.root_markers) or vim.fn.getcwd()
        vim.lsp.start(cfg, { bufnr = args.buf })
      end,
    })
  end
  vim.api.nvim_create_user_command("AssistantContext", function()
    M.show_context()
  end, { desc = "Show the context a completion at the cursor would use" })
  vim.api.nvim_create_user_command("AssistantChat", function()
    M.open_chat()
  end, { desc = "Open the assistant chat in a terminal split" })
end

--- Ask the server which snippets a completion at the cursor would put in the prompt.
function M.show_context(callback)
  local client = M.client(0)
  if not client then
    vim.notify("assistant: no language server attached to this buffer", vim.log.levels.WARN)
    return
  end
  local pos = vim.lsp.util.make_position_params(0, client.offset_encoding)
  local args = { pos.textDocument.uri, pos.position }
  client:request("workspace/executeCommand", { command = "assistant.showContext", arguments = args },
    function(err, result)
      if err then
        vim.notify("assistant: " .. err.message, vim.log.levels.ERROR)
        return
      end
      if callback then
        return callback(result)
      end
      local lines = {}
      for _, s in ipairs((result or {}).kept or {}) do
        table.insert(lines, string.format("-- %s (%s)", s.path, s.reason))
        vim.list_extend(lines, vim.split(s.text, "\n", { plain = true }))
      end
      for _, s in ipairs((result or {}).dropped or {}) do
        table.insert(lines, string.format("-- dropped for the budget: %s (%s)", s.path, s.reason))
      end
      if #lines == 0 then
        lines = { "-- no context from other files here" }
      end
      vim.cmd("botright new")
      local buf = vim.api.nvim_get_current_buf()
      vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
      vim.bo[buf].buftype = "nofile"
      vim.bo[buf].bufhidden = "wipe"
      vim.bo[buf].filetype = vim.bo[vim.fn.bufnr("#")].filetype
    end)
end

--- The chat (the assistant's terminal UI) in a split, at the workspace root.
function M.open_chat()
  local exe = M.config.cmd[1]
  local root = vim.fs.root(0, M.config.root_markers) or vim.fn.getcwd()
  vim.cmd("botright split")
  vim.fn.termopen({ exe }, { cwd = root })
  vim.cmd("startinsert")
end

return M
