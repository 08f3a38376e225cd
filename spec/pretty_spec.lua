-- procman.pretty: values shown the way a person reads them.
local pretty = require "procman.pretty"
local batch = require "procman.workflows.batch"

local format = pretty.format

describe("procman.pretty", function()
  it("shows scalars as Lua source", function()
    assert.equal("nil", format(nil))
    assert.equal("true", format(true))
    assert.equal("42", format(42))
    assert.equal("1.5", format(1.5))
    assert.equal("3.0", format(3.0))
    assert.equal("0.1", format(0.1))
    assert.equal("1/0", format(1 / 0))
    assert.equal("-1/0", format(-1 / 0))
    assert.equal("0/0", format(0 / 0))
    assert.equal('"a\\nb\\"c"', format('a\nb"c'))
    assert.equal('"\\0\\255"', format("\0\255"))
    assert.equal('"café"', format("café"))
    assert.equal('"a\\13b"', format("a\rb"))
  end)

  it("shows arrays as arrays and sorts the other keys", function()
    assert.equal("{}", format({}))
    assert.equal('{ 1, 2, "x" }', format({ 1, 2, "x" }))
    assert.equal('{ 1, 2, [5] = 5, a = 1, b = 2, ["end"] = 4, ["not a name"] = 3, [true] = 6 }',
                 format({ 1, 2, [5] = 5, b = 2, a = 1, ["not a name"] = 3, ["end"] = 4, [true] = 6 }))
    assert.equal("{ [-1] = 1, [0.5] = 2, [2] = 3 }", format({ [2] = 3, [-1] = 1, [0.5] = 2 }))
  end)

  it("indents what does not fit on a line", function()
    local t = { files = { f1 = "success", f2 = "success", f3 = "success" }, id = "batch1", status = "success" }
    assert.equal('{ files = { f1 = "success", f2 = "success", f3 = "success" }, id = "batch1", status = "success" }',
                 format(t, { width = 120 }))
    assert.equal(table.concat({
      "{",
      '  files = { f1 = "success", f2 = "success", f3 = "success" },',
      '  id = "batch1",',
      '  status = "success"',
      "}",
    }, "\n"), format(t))
  end)

  it("shows cycles and shared tables as back-references", function()
    local t = { name = "loop" }
    t.self = t
    assert.equal('<1>{ name = "loop", self = <1> }', format(t))
    local shared = { 1 }
    assert.equal("{ a = <1>{ 1 }, b = <1> }", format({ a = shared, b = shared }))
  end)

  it("cuts long tables with a count, and deep ones", function()
    local long = {}
    for i = 1, 150 do long[i] = i end
    local text = format(long, { width = 100000 })
    assert.matches("^{ 1, 2, 3, ", text)
    assert.matches(", 100, %.%.%. %(50 more%) }$", text)
    assert.equal("{ { {...} } }", format({ { { { 1 } } } }, { max_depth = 1 }))
  end)

  it("install() makes the stock REPL's print pretty", function()
    local p = assert(io.popen("printf '{ b = 2, a = { 1, 2 } }\\n\"text\"\\n' | "
      .. "LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' "
      .. "lua5.4 -i -e 'require(\"procman.pretty\").install()' 2>&1"))
    local out = p:read("a")
    p:close()
    assert.matches("{ a = { 1, 2 }, b = 2 }", out, 1, true)
    assert.matches("\ntext\n", out, 1, true)  -- strings print as print prints them
    local saved = print
    local original = pretty.install()
    assert.equal(saved, original)
    assert.are_not.equal(saved, print)
    _G.print = original
  end)

  it("honours __tostring, for procman.pm too", function()
    local obj = setmetatable({}, { __tostring = function() return "<obj>" end })
    assert.equal("{ <obj> }", format({ obj }))
    assert.equal("procman.pm: batch/b1 (idle, v0)", format(batch:new("b1")))
  end)
end)
