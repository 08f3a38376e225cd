--- procman [repl] [--journal FILE] [WORKFLOW_FILE ...]: the REPL.
--
-- On a terminal, lines are read with line editing, history (kept in
-- ~/.procman_history) and tab completion when procman.lineedit (libedit)
-- is there; otherwise, and when stdin is not a terminal, plain lines.
-- Piped input is echoed after each prompt, so the output reads as a
-- transcript.
local procman = require "procman"
local terminal = require "procman.terminal"
local repl = require "procman.repl"

local HISTORY_FILE = ".procman_history"

-- procman.lineedit, or nil and one line saying why the REPL reads plain
-- lines (it is a rock of its own: procman-lineedit, which needs libedit).
local function load_lineedit()
  local ok, lineedit = pcall(require, "procman.lineedit")
  if ok then return lineedit end
  local why = tostring(lineedit)
  if why:find("module 'procman.lineedit' not found", 1, true) then
    return nil, "no line editing (procman.lineedit is not installed): for history and Tab completion, "
                .. "luarocks --lua-version=5.4 make procman-lineedit-*.rockspec (needs libedit; "
                .. "Debian: apt-get install libedit-dev)"
  end
  return nil, "no line editing: procman.lineedit does not load (" .. why:match("[^\n]*") .. ")"
end

-- read(prompt) -> line or nil; and a function to call when the REPL ends.
local function line_reader(session, cli, interactive)
  if interactive then
    local lineedit, why = load_lineedit()
    if not lineedit then
      cli.io.stderr:write("procman: ", why, "\n")
    else
      local home = os.getenv("HOME")
      local history = home and (home .. "/" .. HISTORY_FILE) or nil
      local editor = lineedit.new { history = history,
                                    complete = function(text) return session:complete(text) end }
      return function(prompt) return editor:read(prompt) end, function() editor:close() end
    end
  end
  return function(prompt)
    cli.io.stdout:write(prompt)
    cli.io.stdout:flush()
    return cli.io.stdin:read("l")
  end, function() end
end

return function(args, cli)
  local session = repl.new()
  local out = cli.io.stdout
  for _, name in ipairs(args.workflows or {}) do
    out:write(session:feed(".load " .. name), "\n")
  end
  if args.journal then
    out:write(session:feed(".journal " .. args.journal), "\n")
  end
  local interactive = terminal.is_terminal(0) and terminal.is_terminal(1)
  if interactive then
    out:write(procman._VERSION, " REPL: Lua expressions and statements, .help for commands; ",
              "Ctrl-C interrupts, Ctrl-D leaves.\n")
  end
  local read, finish = line_reader(session, cli, interactive)
  repl.loop {
    session = session,
    read = read,
    prompt_in_read = true,
    write = function(text)
      out:write(text)
      out:flush()
    end,
    echo = not interactive,
    call = terminal.interruptible,
  }
  finish()
  local r = rawget(session.env, "r")
  if getmetatable(r) and tostring(r):find("^procman.router") then r:close() end
  return 0
end
