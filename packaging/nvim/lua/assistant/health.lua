-- :checkhealth assistant: is the binary there, does the model load, is the server running.
local M = {}

function M.check()
  local health = vim.health
  local cfg = require("assistant").config
  health.start("assistant")
  local exe = cfg.cmd[1]
  if vim.fn.executable(exe) == 1 then
    health.ok(string.format("'%s' found: %s", exe, vim.fn.exepath(exe)))
  else
    health.error(string.format("'%s' is not on PATH", exe),
      { "install it: pip install assistant, or set cmd in require('assistant').setup()" })
    return
  end
  local out = vim.fn.system({ exe, "models", "info", "--json" })
  if vim.v.shell_error == 0 then
    local ok, info = pcall(vim.json.decode, out)
    if ok then
      health.ok(string.format("model %s (%s) runs on %s: %s", info.name or "?", info.architecture,
        info.backend, info.backend_reason))
    else
      health.warn("`assistant models info --json` printed something that is not JSON")
    end
  else
    health.error("the model is not usable: " .. vim.trim(out))
  end
  if vim.lsp.inline_completion then
    health.ok("built-in inline completion available (Neovim >= 0.12)")
  else
    health.info("ghost text drawn by the plugin (no built-in inline completion in this Neovim)")
  end
  local state = require("assistant").state
  if state.last_error then
    health.error(state.last_error, { "see the log: `assistant config show` prints where it is" })
  elseif #vim.lsp.get_clients({ name = "assistant" }) > 0 then
    health.ok("language server running")
  else
    health.info("language server not started yet (it starts with the first buffer of a configured filetype)")
  end
end

return M
