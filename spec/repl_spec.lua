-- procman.repl: the REPL's core, fed lines without a terminal.
local repl = require "procman.repl"

local function feed_all(session, lines)
  local out = {}
  for _, line in ipairs(lines) do
    local text, more = session:feed(line)
    out[#out + 1] = { text, more }
  end
  return out
end

describe("procman.repl", function()
  it("evaluates expressions first, then statements", function()
    local s = repl.new()
    assert.same({ "2", false }, { s:feed("1+1") })
    assert.same({ "5", false }, { s:feed("x = 5") })       -- an assignment shows the value, as iex does
    assert.same({ "10", false }, { s:feed("x * 2") })
    assert.same({ "", false }, { s:feed("local y = 1") })  -- other statements show nothing
    assert.same({ "1\n2", false }, { s:feed("return 1, 2") })
    assert.same({ "nil", false }, { s:feed("nil") })
  end)

  it("continues an incomplete chunk, with its own prompt", function()
    local s = repl.new()
    assert.equal("> ", s:prompt())
    assert.same({ { "", true }, { "", true }, { "", false } },
                feed_all(s, { "function twice(n)", "  return 2 * n", "end" }))
    assert.equal("> ", s:prompt())
    s:feed("t = {")
    assert.equal(">> ", s:prompt())
    s:reset()
    assert.equal("> ", s:prompt())
    assert.same({ "42", false }, { s:feed("twice(21)") })
  end)

  it("shows errors and goes on", function()
    local s = repl.new()
    assert.same({ "error: stdin:1: boom", false }, { s:feed('error("boom")') })
    assert.same({ "error: stdin:1: attempt to index a nil value (global 'nosuch')", false },
                { s:feed("nosuch.field") })
    assert.same({ "error: { code = 7 }", false }, { s:feed("error({ code = 7 })") })
    s:feed("(")
    assert.same({ "error: stdin:2: unexpected symbol near ')'", false }, { s:feed(")") })
    assert.same({ "3", false }, { s:feed("1 + 2") })
  end)

  it("runs the seed's session line by line, with procman, batch and order loaded", function()
    local s = repl.new()
    assert.equal("procman.pm: batch/batch1 (idle, v0)", (s:feed('pm = batch:new("batch1")')))
    assert.equal(table.concat({
      "{",
      '  { command_type = "process_file", file = "f1" },',
      '  { command_type = "process_file", file = "f2" },',
      '  { command_type = "process_file", file = "f3" }',
      "}" }, "\n"), (s:feed('pm:handle{ event_type = "batch_created", files = { "f1", "f2", "f3" } }')))
    for _, f in ipairs({ "f1", "f2", "f3" }) do
      assert.equal("{}", (s:feed('pm:handle{ event_type = "file_processed", file = { id = "' .. f .. '", status = "success" } }')))
    end
    assert.equal(table.concat({
      "{",
      '  files = { f1 = "success", f2 = "success", f3 = "success" },',
      '  id = "batch1",',
      '  status = "success"',
      "}" }, "\n"), (s:feed("pm:state()")))
    assert.equal("procman.workflow: order", (s:feed("order")))
    assert.equal('"procman 0.1.0"', (s:feed("procman._VERSION")))
  end)

  it("completes globals, fields, keywords and procman.pm methods", function()
    local s = repl.new()
    s:feed('pm = batch:new("b1")')
    s:feed("t = { alpha = 1, beta = { gamma = 2 } }")
    assert.same({ "pm:handle", "pm:history" }, s:complete("pm:h"))
    assert.same({ "pm:close", "pm:done", "pm:handle", "pm:history", "pm:id", "pm:state", "pm:status", "pm:version" },
                s:complete("pm:"))
    assert.same({ "procman.workflow" }, s:complete("procman.wo"))
    assert.same({ "t.beta.gamma" }, s:complete("t.beta.g"))
    assert.same({ "print(t.alpha" }, s:complete("print(t.al"))
    assert.same({ "string.format" }, s:complete("string.fo"))
    assert.same({ "while" }, s:complete("whi"))
    assert.same({ "batch" }, s:complete("bat"))
    assert.same({}, s:complete("nosuch.x"))
  end)

  it("lets Ctrl-C (SIGINT) stop running code without ending the process", function()
    local terminal = require "procman.terminal"
    local pid = assert(io.open("/proc/self/stat")):read("n")
    os.execute("(sleep 0.3; kill -INT " .. pid .. ") &")
    local ok, err = pcall(terminal.interruptible, function() local n = 0 while true do n = n + 1 end end)
    assert.is_false(ok)
    assert.matches("interrupted!$", err)
    assert.same({ 3, "x" }, { terminal.interruptible(function(a, b) return a + b, "x" end, 1, 2) })
    -- in a loop fed by the CLI: the session goes on after an interruption
    local lines = { "while true do end", "1 + 1" }
    local out = {}
    os.execute("(sleep 0.3; kill -INT " .. pid .. ") &")
    repl.loop { read = function() return table.remove(lines, 1) end,
                write = function(text) out[#out + 1] = text end, call = terminal.interruptible }
    assert.same({ "> ", "error: interrupted!\n", "> ", "2\n", "> ", "\n" }, out)
  end)

  it("completes a workflow's methods, which sit behind a function __index, without calling it", function()
    local s = repl.new()
    s:feed(".load spec/fixtures/reminder.lua")
    assert.same({ "reminder:new" }, s:complete("reminder:n"))
    assert.same({ "batch:handles", "batch:new", "batch:starts_on" }, s:complete("batch:"))
    assert.same({ "order.new" }, s:complete("order.ne"))
    local called = false
    s.env.trap = setmetatable({}, { __index = function() called = true end, __methods = { go = print } })
    assert.same({ "trap:go" }, s:complete("trap:"))
    assert.is_false(called)
  end)

  it("says in .help what r:handle returns: command envelopes", function()
    local help = repl.new():feed(".help")
    assert.matches("r:handle{ ... } routes an event\nand returns the command envelopes it produced", help, 1, true)
    assert.not_matches("answers with an event", help, 1, true)
    local r = require("procman").router { workflows = { require "procman.workflows.batch" } }
    local envelope = r:handle { event_type = "batch_created", batch_id = "b", files = { "f" } }[1]
    assert.same({ "command", "flow", "id", "workflow" }, (function()
      local keys = {}
      for k in pairs(envelope) do keys[#keys + 1] = k end
      table.sort(keys)
      return keys
    end)())
  end)

  it("never runs user code to complete", function()
    local s = repl.new()
    local called = false
    s.env.trap = setmetatable({}, { __index = function() called = true return {} end,
                                    __pairs = function() called = true return next, {} end })
    s:complete("trap.x.y")
    s:complete("trap.")
    assert.is_false(called)
  end)

  describe("dot commands", function()
    local files = require "spec.support.files"

    it("explain themselves, and refuse what they cannot do", function()
      local s = repl.new()
      assert.matches("^%.help              these commands\n%.load FILE", (s:feed(".help")))
      assert.equal("error: usage: .load FILE", (s:feed(".load")))
      assert.matches("^error: nosuch: no such file", (s:feed(".load nosuch")))
      assert.equal("error: no router: open one with .journal FILE (or set r = procman.router { ... })",
                   (s:feed(".pending")))
      assert.equal("error: .timeline needs a procman.pm, got 42", (s:feed(".timeline 42")))
      assert.equal("error: unknown command .run (.help lists them)", (s:feed(".run")))
      assert.equal("1", (s:feed("  .5 + .5 == 1 and 1")))  -- Lua that starts with a dot is... not a command
    end)

    it("load a workflow file into the session, and open routers with it", function()
      local s = repl.new()
      assert.equal("procman.workflow: reminder (as the global reminder)",
                   (s:feed(".load spec/fixtures/reminder.lua")))
      local path = files.temp_path()
      assert.matches("^procman.router %(0 live", (s:feed(".journal " .. path)))
      s:feed('r:handle { event_type = "open", id = 1 }')
      assert.equal(1, s.env.r:flow("reminder", 1):version())
      s.env.r:close()
      os.remove(path)
    end)

    it("show the timeline of a flow restored from a snapshot, from the snapshot on", function()
      local s = repl.new()
      local path = files.temp_path()
      s:feed(".journal " .. path)
      s:feed('r:handle { event_type = "batch_created", batch_id = 1, files = { "a", "b" } }')
      s:feed("r:compact()")
      s:feed(".journal " .. path)
      s:feed('r:handle { event_type = "file_processed", batch_id = 1, file = { id = "a", status = "success" } }')
      local out = s:feed(".timeline r:flow('batch', 1)")
      assert.matches("^procman.pm: batch/1 %(pending, v2%): 1 events since its snapshot at v1\nv2  ", out)
      assert.matches("status: pending  state: {", out)
      s.env.r:close()
      os.remove(path)
    end)
  end)
end)
