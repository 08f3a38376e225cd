--- The dispatch alone, in a process of its own: N commands pending, then
-- one dispatch of all of them, timed.
-- Usage: lua5.4 bench/dispatch_case.lua CASE N [JOURNAL]
--   plain    plain Lua: a queue of envelope tables, fn(command, envelope)
--            under pcall per command, then the ack (slot cleared)
--   memory   r:dispatch of a procman.router without a journal
--   journal  r:dispatch of a journaled router (sync none): an ack record each
--   hooked   r:dispatch of a router in memory with a hook (any hook: the
--            ack goes through Lua)
--   setup    the memory case's run without its dispatch (valgrind and
--            callgrind: a case's run less this one is the dispatch's cost)
--   ack-plain, ack-memory, ack-journal: the gateway acks each command itself
--            by id (r:ack, ids taken from r:pending() beforehand), in
--            emission order; plain: the queue's index by id (ack-setup:
--            the runs without their acks)
-- The commands are the router bench's: batch flows of 3 files, made by
-- batch_created events (N/3 of them). Prints us_per_command.
local procman = require "procman"
local batch = require "procman.workflows.batch"

local case, n, journal = arg[1], tonumber(arg[2]), arg[3]
local clock = os.clock
local FILES = { "a", "b", "c" }
local flows = n // 3

local function created(flow)
  return { event_type = "batch_created", batch_id = flow, event_id = flow, files = FILES }
end

local function gateway() end

local function timed(dispatch)
  collectgarbage()
  local t0 = clock()
  local count = dispatch()
  local s = clock() - t0
  assert(count == 3 * flows, "dispatched " .. tostring(count))
  return string.format("us_per_command=%.4f", s / count * 1e6)
end

local cases = {}

-- What a hand-written router keeps and does: the envelopes it made, in a
-- queue; the gateway under pcall, then the command is forgotten.
local function plain_queue()
  local queue, index = {}, {}
  for flow = 1, flows do
    for i, f in ipairs(FILES) do
      local id = "batch/" .. flow .. "/1/" .. i
      queue[#queue + 1] = { id = id, workflow = "batch", flow = flow,
                            command = { command_type = "process_file", file = f } }
      index[id] = #queue
    end
  end
  return queue, index
end

function cases.plain()
  local queue, index = plain_queue()
  return timed(function()
    local count = 0
    for i = 1, #queue do
      local envelope = queue[i]
      local ok = pcall(gateway, envelope.command, envelope)
      if not ok then break end
      local id = envelope.id  -- acked by id, as r:ack finds it
      queue[index[id]], index[id] = nil, nil
      count = count + 1
    end
    return count
  end)
end

-- A router with the commands pending (and, with 'with_ids', their ids
-- from r:pending()).
local function pending_router(options, with_ids)
  options.workflows = { batch }
  local r = assert(procman.router(options))
  for flow = 1, flows do assert(r:handle(created(flow))) end
  local ids = {}
  if with_ids then
    for i, envelope in ipairs(r:pending()) do ids[i] = envelope.id end
  end
  return r, ids
end

-- The figure of work(r, ids), timed, on a router with the commands pending:
-- it leaves the outbox empty.
local function router_case(options, with_ids, work)
  local r, ids = pending_router(options, with_ids)
  local result = timed(function() return work(r, ids) end)
  assert(r:stats().pending == 0)
  if options.journal then r:close() os.remove(options.journal) end
  return result
end

local function dispatch_case(options)
  return router_case(options, false, function(r) return r:dispatch(gateway) end)
end

cases["ack-plain"] = function()
  local queue, index = plain_queue()
  local ids = {}
  for i, envelope in ipairs(queue) do ids[i] = envelope.id end
  return timed(function()
    for _, id in ipairs(ids) do
      local at = index[id]
      if at == nil then error("no pending command with id " .. id) end
      queue[at], index[id] = nil, nil
    end
    return #ids
  end)
end

local function ack_case(options)
  return router_case(options, true, function(r, ids)
    for _, id in ipairs(ids) do assert(r:ack(id)) end
    return #ids
  end)
end

cases["ack-memory"] = function() return ack_case {} end

cases["ack-setup"] = function()  -- the ack cases' runs without their acks
  local r, ids = pending_router({}, true)
  collectgarbage()
  assert(#ids == 3 * flows and r:stats().pending == #ids)
  return "us_per_command=0"
end

cases["ack-journal"] = function()
  os.remove(journal)
  return ack_case { journal = journal, sync = "none" }
end

function cases.memory() return dispatch_case {} end

function cases.setup()
  local r = assert(procman.router { workflows = { batch } })
  for flow = 1, flows do assert(r:handle(created(flow))) end
  collectgarbage()
  assert(r:stats().pending == 3 * flows)
  return "us_per_command=0"
end

function cases.journal()
  os.remove(journal)
  return dispatch_case { journal = journal, sync = "none" }
end

function cases.hooked()
  return dispatch_case { hooks = { event_handled = function() end } }
end

print((cases[case] or error("no case " .. tostring(case)))())
