--- The seed's iex session (Real-World Event Sourcing, "Creating a Simple
-- Process Manager"), typed in Lua and printed as a transcript. `make demo`
-- runs it. You play the "meatspace aggregate": you turn the commands the
-- process manager returns into the events it receives next.
local repl = require "procman.repl"

local session = repl.new()

-- Type one line at the REPL and show the transcript.
local function run(line)
  print(session:prompt() .. line)
  local output = session:feed(line)
  if output ~= "" then print(output) end
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
