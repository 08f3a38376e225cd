--- procman.repl: the core of procman's REPL, apart from any terminal.
--
--   local session = repl.new()
--   local output, more = session:feed(line)  -- text to show; more: the chunk goes on
--   session:prompt()                          -- "> ", or ">> " inside a chunk
--   session:complete(text)                    -- completion candidates for text
--
-- Like lua.c: a line is tried as an expression first ("return <line>"),
-- then as a statement; a chunk whose syntax error ends at <eof> is
-- incomplete, and the next lines continue it. Results are pretty-printed
-- (procman.pretty); errors are shown and the session goes on. Completion
-- walks tables with rawget and never runs user code. Lines starting with
-- '.' are commands for exploring flows (procman.repl_commands: .help).
local pretty = require "procman.pretty"
local commands = require "procman.repl_commands"

local repl = {}
local Session = {}
Session.__index = Session

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do KEYWORDS[#KEYWORDS + 1] = w end

--- repl.new([opts]) -> a session. opts.env: the globals (default: a new
-- table over _G with procman, batch and order loaded); opts.width: for
-- pretty printing.
function repl.new(opts)
  opts = opts or {}
  local env = opts.env
  local batch, order = require "procman.workflows.batch", require "procman.workflows.order"
  if env == nil then
    env = setmetatable({}, { __index = _G })
    env.procman = require "procman"
    env.batch, env.order = batch, order
  end
  -- the workflows .journal opens a router with (.load adds to them)
  local workflows = { batch = batch, order = order }
  return setmetatable({ env = env, pending = nil, width = opts.width, workflows = workflows,
                        warnings = {} }, Session)
end

function Session:prompt()
  return self.pending and ">> " or "> "
end

-- Compile a chunk: the function, or nil and (message, incomplete).
local function compile(source, env)
  local fn, err = load(source, "=stdin", "t", env)
  if fn then return fn end
  return nil, err, err:find("<eof>$") ~= nil
end

local function show_results(self, results)
  local lines = {}
  for i = 1, results.n do
    lines[i] = pretty.format(results[i], { width = self.width })
  end
  return table.concat(lines, "\n")
end

-- Run a compiled chunk; show its results, or its error. A statement that
-- assigns one global ("pm = batch:new(...)") shows the value, as iex does.
local function run(self, fn, source)
  local results = table.pack(pcall(fn))
  if not results[1] then
    local err = results[2]
    return "error: " .. (type(err) == "string" and err or pretty.format(err))
  end
  local assigned = results.n == 1 and source:match("^%s*([%a_][%w_]*)%s*=[^=]")
  if assigned then return pretty.format(self.env[assigned], { width = self.width }) end
  return show_results(self, table.pack(table.unpack(results, 2, results.n)))
end

-- A dot command (.help, .load, ...): its output, or nil if 'line' is Lua.
local function command(self, line)
  if self.pending or not line:find("^%s*%.") then return nil end
  local ok, output = pcall(commands.run, self, line)
  if not ok then return "error: " .. tostring(output) end
  if #self.warnings > 0 then
    output = table.concat(self.warnings, "\n") .. "\n" .. output
    self.warnings = {}
  end
  return output
end

--- session:feed(line) -> output (may be ""), more (true: the chunk goes on)
function Session:feed(line)
  local output = command(self, line)
  if output then return output, false end
  local source = self.pending and (self.pending .. "\n" .. line) or line
  -- an expression first: "1+1" shows 2; then the line as a statement
  local fn = not self.pending and load("return " .. source, "=stdin", "t", self.env)
  if not fn then
    local err, incomplete
    fn, err, incomplete = compile(source, self.env)
    if not fn then
      if incomplete then
        self.pending = source
        return "", true
      end
      self.pending = nil
      return "error: " .. err, false
    end
  end
  self.pending = nil
  return run(self, fn, source), false
end

--- session:reset(): drop an unfinished chunk (Ctrl-C at a ">>" prompt).
function Session:reset()
  self.pending = nil
end

-- The table whose keys complete 'v' after '.' (':' for methods): tables
-- themselves; and their metatable's __index table or, when __index is a
-- function (never called here: it is user code), the metatable's
-- __methods table (procman's workflows have one); all by rawget.
local function fields_of(v)
  local t = type(v) == "table" and v or nil
  local mt = getmetatable(v)
  if type(mt) ~= "table" then return t, nil end
  local index = rawget(mt, "__index")
  if type(index) ~= "table" then index = rawget(mt, "__methods") end
  return t, type(index) == "table" and index or nil
end

local function add_keys(out, seen, t, prefix, partial, want_functions)
  if type(t) ~= "table" then return end
  for k, v in next, t do
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and k:sub(1, #partial) == partial
       and not seen[k] and (not want_functions or type(v) == "function") then
      seen[k] = true
      out[#out + 1] = prefix .. k
    end
  end
end

--- session:complete(text) -> sorted candidates that complete the name at
-- the end of text ("pm:ha" -> { "pm:handle" }).
function Session:complete(text)
  local head, path = text:match("^(.-)([%a_][%w_%.:]*)$")
  if not path then head, path = text, "" end
  local partial = path:match("[%a_]?[%w_]*$")
  local base = path:sub(1, #path - #partial)
  local out, seen = {}, {}
  if base == "" then  -- a global, or a keyword
    add_keys(out, seen, self.env, head, partial)
    local mt = getmetatable(self.env)
    add_keys(out, seen, type(mt) == "table" and rawget(mt, "__index") or nil, head, partial)
    for _, w in ipairs(KEYWORDS) do
      if w:sub(1, #partial) == partial and not seen[w] then out[#out + 1] = head .. w end
    end
  else
    local v = self.env
    for name in base:sub(1, -2):gmatch("[^%.:]+") do  -- walk, never calling anything
      local t, index = fields_of(v)
      local next_v = t and rawget(t, name)
      if next_v == nil and index then next_v = rawget(index, name) end
      if next_v == nil and v == self.env then
        local mt = getmetatable(self.env)
        local g = type(mt) == "table" and rawget(mt, "__index")
        next_v = type(g) == "table" and rawget(g, name) or nil
      end
      v = next_v
      if v == nil then return {} end
    end
    local t, index = fields_of(v)
    local methods = base:sub(-1) == ":"
    add_keys(out, seen, t, head .. base, partial, methods)
    add_keys(out, seen, index, head .. base, partial, methods)
  end
  table.sort(out)
  return out
end

--- repl.loop(opts): read, evaluate, print until the input ends.
-- opts.read() -> a line, false (Ctrl-C: drop the line), or nil (the end:
-- Ctrl-D); or opts.read(prompt)
-- with opts.prompt_in_read (a line editor shows the prompt); opts.write(text);
-- opts.echo: write each line after its prompt (for input that is not a
-- terminal, so the output reads as a transcript); opts.call(fn, ...): how
-- to run an evaluation (procman's CLI passes terminal.interruptible, so Ctrl-C
-- stops running code, not the REPL); opts.session: the session to use.
function repl.loop(opts)
  local session = opts.session or repl.new()
  local call = opts.call or function(fn, ...) return fn(...) end
  while true do
    local line
    if opts.prompt_in_read then
      line = opts.read(session:prompt())
    else
      opts.write(session:prompt())
      line = opts.read()
    end
    if line == nil then
      opts.write("\n")
      return session
    end
    if line == false then  -- Ctrl-C at the prompt: the line (and any open chunk) is dropped
      session:reset()
      goto continue
    end
    if opts.echo then opts.write(line .. "\n") end
    local ok, output = pcall(call, session.feed, session, line)
    if not ok then  -- interrupted between feed's own protected calls
      session:reset()
      output = "error: " .. tostring(output)
    end
    if output ~= "" then opts.write(output .. "\n") end
    ::continue::
  end
end

return repl
