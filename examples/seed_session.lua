--- The seed's iex session (Real-World Event Sourcing, "Creating a Simple
-- Process Manager"), typed in Lua and printed as a transcript. `make demo`
-- runs it. You play the "meatspace aggregate": you turn the commands the
-- process manager returns into the events it receives next.
local pretty = require "procman.pretty"

local env = setmetatable({}, { __index = _G })

-- Run one line like a REPL does: as an expression first, then as a statement.
local function run(line)
  print("> " .. line)
  local chunk = load("return " .. line, "=demo", "t", env) or assert(load(line, "=demo", "t", env))
  local results = table.pack(pcall(chunk))
  if not results[1] then
    print("error: " .. tostring(results[2]))
  else
    local assigned = line:match("^([%a_][%w_]*) = ")  -- show it, as iex does
    if assigned then print(pretty.format(env[assigned])) end
    for i = 2, results.n do print(pretty.format(results[i])) end
  end
  print()
end

local function say(text) print("-- " .. text) end

say("the seed's session: a batch of three files")
run('batch = require "procman.workflows.batch"')
run('pm = batch:new("batch1")')
run('pm:handle{ event_type = "batch_created", files = { "f1", "f2", "f3" } }')
run('pm:handle{ event_type = "file_processed", file = { id = "f1", status = "success" } }')
run('pm:handle{ event_type = "file_processed", file = { id = "f2", status = "success" } }')
run('pm:handle{ event_type = "file_processed", file = { id = "f3", status = "success" } }')
run('pm:state()')

say("what procman adds: bad events are refused and change nothing")
run('pm2 = batch:new("batch2")')
run('pm2:handle{ event_type = "batch_created", files = { "a", "b" } }')
run('pm2:handle{ event_type = "file_processed", file = { id = "zz", status = "success" } }')
run('pm2:handle{ event_type = "file_processed", batch_id = "batch1", file = { id = "a", status = "success" } }')
run('pm2')

say("redelivery (the same event_id) is recognised and ignored")
run('pm2:handle{ event_type = "file_processed", event_id = "e1", file = { id = "a", status = "error" } }')
run('pm2:handle{ event_type = "file_processed", event_id = "e1", file = { id = "a", status = "error" } }')
run('pm2')

say("the state is the fold of the events the flow keeps")
run('pm2:history()')
