--- Crash soak: a random workload in a child process, killed with SIGKILL
-- at random moments, recovered each time and checked against an in-memory
-- reference run of the same operations.
--
--   lua5.4 tools/soak.lua [--rounds N] [--ops N] [--seed N] [--sync always|batch|none]
--
-- The workload (from the seed, the same in every process): batch flows
-- (some with file timeouts, so timers), order flows, acks of the oldest
-- pending command, clock ticks, compactions. The child applies operations
-- from where the journal left off and writes each one's number to a
-- progress file once it returned. After each kill the parent reopens the
-- journal and checks the invariants:
--   no acknowledged operation lost: the recovered router equals the
--     reference after the last acknowledged operation, or after the one
--     in flight;
--   nothing applied twice, outbox = emitted - acked, states equal: the
--     comparison covers every flow's state and version, the pending
--     outbox, timers, parked flows and completed flows.
-- With sync "batch" or "none" the journal buffers records, and a kill
-- loses those not yet written: the recovered router must then equal the
-- reference after some operation from the last one known written on (an
-- ack, which lists the outbox first and so writes the buffer: a command
-- never leaves before its record; a compaction; the round's start) to the
-- one in flight.
-- Exit status 0 when every round holds; prints a summary line.
package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath

local procman = require "procman"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"

local WORKFLOWS = { batch, order }

-- ---------------------------------------------------------------------
-- The workload
-- ---------------------------------------------------------------------

local function workload(seed, n)
  math.randomseed(seed)
  local ops, batches, orders, time = {}, 0, 0, 0
  local open_batches, open_orders = {}, {}
  for i = 1, n do
    local roll = math.random(100)
    if roll <= 15 or #open_batches == 0 then
      batches = batches + 1
      local files = {}
      for f = 1, math.random(3) do files[f] = "f" .. f end
      local op = { kind = "event", event = { event_type = "batch_created", batch_id = "b" .. batches,
                                             event_id = "e" .. i, files = files } }
      if math.random(3) == 1 then op.event.file_timeout = math.random(5, 30) end
      if math.random(4) == 1 then op.event.max_attempts = 2 end
      open_batches[#open_batches + 1] = { id = "b" .. batches, files = #files }
      ops[i] = op
    elseif roll <= 45 then
      local b = open_batches[math.random(#open_batches)]
      local file = { id = "f" .. math.random(b.files), status = math.random(4) == 1 and "error" or "success" }
      ops[i] = { kind = "event", event = { event_type = "file_processed", batch_id = b.id,
                                           event_id = "e" .. i, file = file } }
    elseif roll <= 55 then
      orders = orders + 1
      local items = { { sku = "s" .. math.random(9), quantity = math.random(3) } }
      ops[i] = { kind = "event", event = { event_type = "order_created", order_id = orders,
                                           event_id = "e" .. i, items = items } }
      open_orders[#open_orders + 1] = orders
    elseif roll <= 65 and #open_orders > 0 then
      local types = { "payment_approved", "payment_declined", "order_shipped", "order_canceled",
                      "payment_details_updated" }
      ops[i] = { kind = "event", event = { event_type = types[math.random(#types)],
                                           order_id = open_orders[math.random(#open_orders)],
                                           event_id = "e" .. i } }
    elseif roll <= 75 then
      ops[i] = { kind = "redeliver", of = math.random(i - 1) }  -- at-least-once delivery
    elseif roll <= 90 then
      ops[i] = { kind = "ack" }
    elseif roll <= 97 then
      time = time + math.random(10)
      ops[i] = { kind = "tick", time = time }
    else
      ops[i] = { kind = "compact" }
    end
  end
  return ops
end

-- Apply operation i. Events the workflows refuse (an order event out of
-- place, a redelivery of an event that was refused) are part of the
-- workload: refused alike in every run.
local function apply(r, ops, i)
  local op = ops[i]
  if op.kind == "redeliver" then
    local original = ops[op.of]
    if original.kind ~= "event" then return true end
    op = original
  end
  if op.kind == "event" then
    local ok, result, err = pcall(r.handle, r, op.event)
    if ok and result == nil then error(err, 0) end  -- the journal failed: not part of the workload
    return true
  elseif op.kind == "ack" then
    local pending = r:pending()
    if pending[1] then assert(r:ack(pending[1].id)) end
  elseif op.kind == "tick" then
    local ok, result, err = pcall(r.tick, r, op.time)
    if ok and result == nil then error(err, 0) end
  elseif op.kind == "compact" then
    assert(r:compact())
  end
  return true
end

local function clock_at(ops, i)  -- the time of the last tick before op i
  for j = i - 1, 1, -1 do
    if ops[j].kind == "tick" then return ops[j].time end
  end
  return 0
end

-- ---------------------------------------------------------------------
-- The child: apply operations from 'start', logging each one done
-- ---------------------------------------------------------------------

local function child(journal, progress, seed, n, start, sync)
  local ops = workload(seed, n)
  local now = clock_at(ops, start)
  local r = assert(procman.router { workflows = WORKFLOWS, journal = journal, sync = sync,
                                    clock = function() return now end, warn = function() end })
  local log = assert(io.open(progress, "a"))
  for i = start, n do
    if ops[i].kind == "tick" then now = ops[i].time end
    apply(r, ops, i)
    log:write(i, "\n")
    log:flush()
  end
  r:close()
end

-- ---------------------------------------------------------------------
-- The parent
-- ---------------------------------------------------------------------

local function snapshot(r)
  local flows = {}
  for pm in r:flows() do flows[tostring(pm)] = { state = pm:state(), version = pm:version() } end
  return procman.encode { flows, r:pending(), r:timers(), r:parked(), r:stats().completed }
end

-- Show what differs (SOAK_DEBUG=1).
local function debug_diff(got, reference, journal)
  local pretty = require "procman.pretty"
  local a, b = procman.decode(got), procman.decode(snapshot(reference))
  for i = 1, 5 do
    if procman.encode(a[i]) ~= procman.encode(b[i]) then
      io.stderr:write("part ", i, "\nrecovered: ", pretty.format(a[i]), "\nreference: ",
                      pretty.format(b[i]), "\n")
    end
  end
  io.stderr:write("journal kept at ", journal, "\n")
end

local function due_timers(r, now)
  local n = 0
  for _, t in ipairs(r:timers()) do
    if t.due <= now then n = n + 1 end
  end
  return n
end

local function last_logged(progress)
  local last = 0
  local f = io.open(progress)
  if f then
    for line in f:lines() do last = tonumber(line) or last end
    f:close()
  end
  return last
end

-- The last operation up to 'last' whose record the journal surely has
-- (not less than 'floor'): an ack lists the outbox first, which writes
-- every record before it; a compaction writes them all.
local function written_through(ops, last, floor, sync)
  if sync == "always" then return last end
  for i = last, floor + 1, -1 do
    if ops[i].kind == "compact" then return i end
    if ops[i].kind == "ack" then return math.max(i - 1, floor) end
  end
  return floor
end

local function parent(opts)
  local ops = workload(opts.seed, opts.ops)
  local journal = os.tmpname() .. ".pmj"
  local progress = os.tmpname()
  os.remove(journal)
  local ref_now = 0
  local reference = procman.router { workflows = WORKFLOWS, clock = function() return ref_now end }
  local applied = 0  -- operations the reference has applied
  local function advance(to)
    while applied < to do
      applied = applied + 1
      if ops[applied].kind == "tick" then ref_now = ops[applied].time end
      if ops[applied].kind ~= "compact" then apply(reference, ops, applied) end
    end
  end
  -- Move the reference on until it equals 'got', at most through operation
  -- 'to'. A tick fires each timer as a record of its own, so the journal
  -- may end inside one: its timers are fired one at a time (the child's
  -- next tick fires the rest). True when it ended inside a tick.
  local function match_from(got, to)
    while applied < to and got ~= snapshot(reference) do
      local nxt = ops[applied + 1]
      if nxt.kind == "tick" then
        ref_now = nxt.time
        while got ~= snapshot(reference) and due_timers(reference, ref_now) > 0 do
          reference:tick(ref_now, 1)
        end
        if got == snapshot(reference) then return true end
      end
      advance(applied + 1)
    end
    return false
  end
  local start, rounds, in_flight_seen, done_ops, partial_ticks, unwritten = 1, 0, 0, 0, 0, 0
  math.randomseed(opts.seed + 1)
  while rounds < opts.rounds and start <= opts.ops do
    rounds = rounds + 1
    local cmd = string.format("exec lua5.4 tools/soak.lua --child %s %s %d %d %d %s", journal, progress,
                              opts.seed, opts.ops, start, opts.sync)
    os.execute(string.format("%s & pid=$!; sleep 0.%03d; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null",
                             cmd, math.random(20, 400)))
    -- (a child killed before it logged anything did at least what the last
    -- round recovered)
    local last = math.max(last_logged(progress), start - 1)
    local r = assert(procman.router { workflows = WORKFLOWS, journal = journal, warn = function() end })
    local got = snapshot(r)
    r:close()
    -- the journal holds every operation through the last one known written
    -- (with sync "always": the last logged); buffered, maybe some after it
    advance(written_through(ops, last, start - 1, opts.sync))
    local partial = match_from(got, last + 1)
    if got ~= snapshot(reference) then
      io.stderr:write(string.format("seed %d, round %d: the recovered router differs from the "
                                    .. "reference after operation %d (and %d)\n", opts.seed, rounds,
                                    last, last + 1))
      if os.getenv("SOAK_DEBUG") then
        for j = last - 2, last + 2 do
          io.stderr:write(string.format("op %d: %s\n", j, require("procman.pretty").format(ops[j])))
        end
        debug_diff(got, reference, journal)
      end
      os.exit(1)
    end
    if partial then partial_ticks = partial_ticks + 1 end
    if applied > last then in_flight_seen = in_flight_seen + 1 end
    if applied < last then unwritten = unwritten + last - applied end
    local recovered = applied
    if os.getenv("SOAK_DEBUG") then
      io.stderr:write(string.format("round %d: started at %d, logged %d, recovered %d (%s)\n", rounds,
                                    start, last, recovered, ops[recovered + 1] and ops[recovered + 1].kind))
    end
    done_ops = recovered
    start = recovered + 1
  end
  os.remove(journal)
  os.remove(journal .. ".compact")
  os.remove(progress)
  print(string.format("soak: %d rounds killed with SIGKILL, %d operations recovered and checked "
                      .. "(the operation in flight was in the journal %d times, a tick half done %d "
                      .. "times; %d operations done but still in the buffer were lost, as sync "
                      .. "\"%s\" allows), seed %d: ok", rounds, done_ops, in_flight_seen, partial_ticks,
                      unwritten, opts.sync, opts.seed))
end

-- ---------------------------------------------------------------------

if arg[1] == "--child" then
  child(arg[2], arg[3], tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6]), arg[7])
  return
end

local SYNCS = { always = true, batch = true, none = true }
local opts = { rounds = 20, ops = 100000, seed = os.time(), sync = "always" }
local i = 1
while arg[i] do
  local key = arg[i]:match("^%-%-(%a+)$")
  local value = key == "sync" and SYNCS[arg[i + 1]] and arg[i + 1] or tonumber(arg[i + 1])
  if not (key and opts[key] and value) then
    io.stderr:write("usage: lua5.4 tools/soak.lua [--rounds N] [--ops N] [--seed N] "
                    .. "[--sync always|batch|none]\n")
    os.exit(2)
  end
  opts[key] = value
  i = i + 2
end
parent(opts)
