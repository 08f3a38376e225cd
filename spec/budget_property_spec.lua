-- A property of the sandbox, tried on handler bodies generated from a
-- small grammar (loops, pcall/xpcall, metatables with __index, __close
-- and __tostring, string calls that backtrack or allocate, errors): every
-- call returns, having run no more instructions than the budget allows
-- (counted by a hook of the test's own, which the guard calls on), and a
-- call that fails leaves the flow exactly as it was.
--
-- It runs in a child process (a hang is reported, not waited for).
local child = require "spec.support.child"

local PROPERTY = [==[
local procman = require "procman"
local seed, runs = ...
math.randomseed(seed)
local r = math.random

local BUDGET, MEMORY, SLACK = 20000, 256 * 1024, 2048

local function pick(list) return list[r(#list)] end

local leaves = {
  function() return "state.n = (state.n or 0) + 1" end,
  function() return "state.t = { " .. r(1, 5) .. ", 'x' }" end,
  function() return "local _ = {}" end,
  function() return "error('plain failure')" end,
  function() return "table.sort({ 3, 1, 2 })" end,
  function() return "local _ = string.format('%99d', 1)" end,
  function()
    return string.format("local _ = (%q):rep(%s)", pick { "", "a", "ab" },
                         pick { "0", "10", "1000", "1e6", "2^40", "math.maxinteger" })
  end,
  function()
    return string.format("local _ = ('a'):rep(%d):find(%q)", pick { 10, 1000, 30000 },
                         pick { "a*b", ("a*"):rep(20) .. "b", "(a+)+$", "%f[%w]%w+", ".-b", "(a*)%1b" })
  end,
  function()
    return string.format("local _ = ('ab'):rep(%d):gsub(%q, %q)", pick { 10, 1000, 100000 },
                         pick { "a", "(a)(b)", "a-b", "%w+" }, pick { "%2%1", "x", "%0%0" })
  end,
  function() return "local big = {} for i = 1, 1e5 do big[i] = i end local _ = table.concat(big, ',')" end,
}

local gen
local branches = {
  function(d) return string.format("for i = 1, %d do %s end", r(1, 10 ^ r(1, 6)), gen(d + 1)) end,
  function(d) return "while true do " .. gen(d + 1) .. " end" end,
  function(d) return "repeat " .. gen(d + 1) .. " until false" end,
  function(d) return "pcall(function() " .. gen(d + 1) .. " end)" end,
  function(d)
    return "xpcall(function() " .. gen(d + 1) .. " end, function(e) " .. gen(d + 1) .. " return e end)"
  end,
  function(d)
    return "local t = setmetatable({}, { __index = function(_, k) " .. gen(d + 1)
           .. " return k end }) local _ = t.x"
  end,
  function(d)
    return "do local c <close> = setmetatable({}, { __close = function() " .. gen(d + 1) .. " end }) "
           .. gen(d + 1) .. " end"
  end,
  function()
    return "error(setmetatable({}, { __tostring = function() " .. pick(leaves)() .. " return 'obj' end }))"
  end,
}

function gen(depth)
  local parts = {}
  for i = 1, r(1, 3) do
    if depth >= 3 or r() < 0.4 then parts[i] = pick(leaves)() else parts[i] = pick(branches)(depth) end
  end
  return table.concat(parts, " ")
end

local counts = { ok = 0, budget = 0, memory = 0, other = 0 }
for run = 1, runs do
  local body = gen(0)
  local wf, err = procman.loadstring(string.format([[return procman.workflow { name = "g",
    budget = %d, memory = %d, on = { ok = function(state) state.n = (state.n or 0) + 1 end,
    go = function(state, event) %s end } }]], BUDGET, MEMORY, body), "=generated")
  if not wf then print("BAD GRAMMAR", body, err) os.exit(1) end
  local pm = wf:new(1)
  pm:handle { event_type = "ok" }
  local state, version = pm:state(), pm:version()
  local executed = 0
  debug.sethook(function() executed = executed + 1 end, "", 1)
  local ok, why = pcall(pm.handle, pm, { event_type = "go" })
  debug.sethook()
  if executed > BUDGET + SLACK then
    print(string.format("PAST THE BOUND: %d instructions for a budget of %d: %s", executed, BUDGET, body))
    os.exit(1)
  end
  if ok then
    counts.ok = counts.ok + 1
    assert(pm:version() == version + 1)
  else
    local kind = why:find("instruction budget", 1, true) and "budget"
                 or why:find("memory budget", 1, true) and "memory" or "other"
    counts[kind] = counts[kind] + 1
    local same = pm:version() == version and procman.encode(pm:state()) == procman.encode(state)
    if not same then print("CHANGED BY A FAILED CALL: " .. body) os.exit(1) end
  end
end
print(string.format("runs %d ok %d budget %d memory %d other %d", runs, counts.ok, counts.budget,
                    counts.memory, counts.other))
]==]

describe("the budget, on generated handlers", function()
  it("bounds every call and leaves the flow unchanged when it fails", function()
    local seed = tonumber(os.getenv("PROCMAN_PROPERTY_SEED")) or 20261202
    local out = child.run("local arg = { " .. seed .. ", 300 }\n"
                          .. PROPERTY:gsub("local seed, runs = %.%.%.", "local seed, runs = arg[1], arg[2]"))
    local ok, budget, memory, other = out:match("runs 300 ok (%d+) budget (%d+) memory (%d+) other (%d+)")
    assert(ok, out)
    -- the grammar reaches every outcome
    assert.is_true(tonumber(ok) > 0 and tonumber(budget) > 0 and tonumber(other) > 0, out)
    assert.is_true(tonumber(memory) > 0, out)
  end)
end)
