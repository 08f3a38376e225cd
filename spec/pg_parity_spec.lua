-- procman.pg: one event sequence through the embedded router and through a
-- worker gives the same flows (status, version, state), outbox (ids and
-- commands), timers, parked flows, dead letters (event and reason) and
-- hook calls: the worker's step is the router's (procman.pg.unit). The
-- sequence has two workflows on one event, integer and string ids (7 and
-- "7" differ), binary and very long ids, an unknown type, a missing
-- correlation field, a table as a flow id, a handler error (parked with
-- on_error = "park"; with "dead_letter", the whole event is refused, as
-- the router refuses it with "raise", and kept as a dead letter), a
-- redelivery, a redelivery after completion, a new event for a completed
-- flow (alone, and beside a live flow of another workflow), timers on a
-- fixed clock, resume and skip; one worker with one partition, and with
-- its flows spread over four. Then workflow versions (flows pinned to the
-- version they started on across a change of code), the policies
-- (on_unknown "dead_letter" and "ignore", on_late "ignore") and the hooks.
local h = require "spec.support.pg_helpers"
local conninfo = h.conninfo

describe("procman.pg parity with the embedded router", function()
  if h.without_cluster(it, pending) then return end

  local pg = require "procman.pg"
  local procman = require "procman"

  local broken = { on = true }
  local account = procman.workflow {
    name = "account", correlate = "acct", starts = { "open" },
    on = {
      open = function(state)
        state.balance = 0
        return { procman.after(100, { event_type = "expire" }, "idle") }
      end,
      add = function(state, e)
        if e.amount < 0 and broken.on then error("negative amount " .. e.amount, 0) end
        state.balance = state.balance + e.amount
        return { { command_type = "credited", amount = e.amount },
                 procman.after(10, { event_type = "expire" }, "expiry") }
      end,
      expire = function(state) state.expired = (state.expired or 0) + 1 end,
      close = function(state) state.closed = true return { { command_type = "closed" } } end,
    },
    done = function(state) return state.closed == true end,
    status = function(state) return state.closed and "closed" or "open" end,
  }
  local audit = procman.workflow {
    name = "audit", correlate = "acct", starts = { "open" },
    on = { open = function(state) state.n = 1 end,
           add = function(state, e) state.n = state.n + 1 return { { command_type = "audited", amount = e.amount } } end,
           close = function(state) state.n = state.n + 1 end },
  }

  local long = ("z"):rep(10 * 1024)                          -- too long for a btree index row
  local binary = "\0\xff\xfe"                                -- NUL, not UTF-8
  local quoted = "it's \\ \"q\"; DROP TABLE x; --\0\xff"     -- quotes, a backslash, SQL, NUL, not UTF-8
  local IDS = { 7, "7", long, binary, quoted, "\xff\0x", 8, "8" }
  local sequence = {
    { event_type = "open", acct = 7 },
    { event_type = "open", acct = "7" },
    { event_type = "add", acct = 7, amount = 5 },                     -- then redelivered
    { event_type = "add", acct = "\xff\0x", amount = 1 },             -- no such flow (in either workflow)
    { event_type = "noise", acct = 7 },                               -- no workflow handles it
    { event_type = "open" },                                          -- no correlation field
    { event_type = "open", acct = { "t" } },                          -- a table as a flow id
    { event_type = "add", acct = 7, amount = -1 },                    -- account/7 fails, audit/7 takes it
    { event_type = "add", acct = 7, amount = 2 },                     -- (parked: held behind it)
    { event_type = "close", acct = "7" },                             -- completes account/"7"; then redelivered
    { event_type = "add", acct = "7", amount = 1 },                   -- late for account/"7"; audit/"7" takes it
    { event_type = "expire", acct = "7" },                            -- late: only account has it
    { event_type = "open", acct = long },
    { event_type = "add", acct = long, amount = 3 },
    { event_type = "open", acct = binary },
    { event_type = "add", acct = binary, amount = 6 },
    { event_type = "open", acct = quoted },
    { event_type = "add", acct = quoted, amount = 4 },
    { event_type = "open", acct = 8 },
    { event_type = "add", acct = "8", amount = 1 },                   -- no flow "8": the router names flow 8
  }
  for i, e in ipairs(sequence) do e.event_id = i end
  local REDELIVERED = { [3] = true, [10] = true }

  -- The hooks' calls, in order, without what depends on the clock or the
  -- runtime (seconds, dead letter ids and times).
  local function recorder()
    local calls, hooks = {}, {}
    for _, name in ipairs { "event_handled", "command_emitted", "flow_started", "flow_completed", "flow_parked",
                            "flow_resumed", "timer_fired", "dead_letter", "event_ignored" } do
      hooks[name] = function(...)
        local args = { name, ... }
        if name == "event_handled" then args[5] = nil end                       -- seconds
        if name == "command_emitted" then args[2] = { args[2].id, args[2].command } end
        if name == "dead_letter" then args[2] = args[2].event.event_id end
        calls[#calls + 1] = args
      end
    end
    return calls, hooks
  end

  -- r:handle as a worker calls it: what the router raises (on_error =
  -- "raise", no flow for the event) is kept as a dead letter, reported
  -- through the dead_letter hook.
  local function caller(r, calls)
    local kept = {}
    return kept, function(event)
      local ok, err = pcall(r.handle, r, event)
      if not ok then
        kept[#kept + 1] = { event = event, error = err }
        calls[#calls + 1] = { "dead_letter", event.event_id }
      end
    end
  end

  local function run_router(on_error)
    local calls, hooks = recorder()
    local r = procman.router { workflows = { account, audit }, on_error = on_error == "park" and "park" or "raise",
                               on_unroutable = "dead_letter", on_late = "dead_letter", hooks = hooks,
                               clock = function() return 1000 end }
    local kept, handle = caller(r, calls)
    for i, e in ipairs(sequence) do
      handle(e)
      if REDELIVERED[i] then handle(e) end
    end
    r:tick(1010)
    return r, kept, calls
  end

  local function run_worker(conn, on_error, partitions)
    local calls, hooks = recorder()
    local w = pg.worker { conninfo = conninfo, workflows = { account, audit }, partitions = partitions,
                          on_error = on_error, hooks = hooks, clock = function() return 1000 end }
    for i, e in ipairs(sequence) do
      assert.truthy(pg.append(conn, e) ~= nil)
      if REDELIVERED[i] then assert.is_false(pg.append(conn, e)) end  -- the store keeps one
    end
    while w:step() > 0 do end
    w:tick(1010)
    return w, calls
  end

  local function flows_of_router(r)
    local out = {}
    for _, name in ipairs { "account", "audit" } do
      for _, id in ipairs(IDS) do
        local pm = r:flow(name, id)
        if pm then
          out[#out + 1] = { name, id, pm:status(), pm:version(), pm:state(), false }
        elseif r:completed(name, id) then
          out[#out + 1] = { name, id, r:completed(name, id), true }
        end
      end
    end
    return out
  end

  local function flows_of_store(conn)
    local out = {}
    for _, name in ipairs { "account", "audit" } do
      for _, id in ipairs(IDS) do
        local f = pg.flow(conn, name, id)
        if f and f.done then
          out[#out + 1] = { name, id, f.status, true }
        elseif f then
          out[#out + 1] = { name, id, f.status, f.version, f.state, false }
        end
      end
    end
    return out
  end

  local function commands(list)
    local out = {}
    for i, e in ipairs(list) do out[i] = { e.id, e.workflow, e.flow, e.command } end
    return out
  end

  local function timers(list)
    local out = {}
    for i, t in ipairs(list) do  -- due: its type too (1010 and 1010.0 are equal in Lua)
      out[i] = { t.workflow, t.flow, t.key, t.due, math.type(t.due), t.event }
    end
    return out
  end

  local function parked(list)
    local out = {}
    for i, p in ipairs(list) do out[i] = { p.workflow, p.flow, p.error, p.event, p.held } end
    return out
  end

  -- Dead letters: the event and the reason, in the order of the events.
  local function letters(list, kept)
    local out = {}
    for _, d in ipairs(list) do out[#out + 1] = { d.event, d.error } end
    for _, d in ipairs(kept or {}) do out[#out + 1] = { d.event, d.error } end
    table.sort(out, function(a, b)
      local x, y = a[1].event_id, b[1].event_id
      if type(x) ~= type(y) then return type(x) == "number" end
      return x < y
    end)
    return out
  end

  local function letter_ids(list)
    local ids = {}
    for i, d in ipairs(letters(list)) do ids[i] = d[1].event_id end
    return ids
  end

  local function same(r, kept, conn)
    assert.same(flows_of_router(r), flows_of_store(conn))
    assert.same(commands(r:pending()), commands(pg.outbox(conn)))
    assert.same(timers(r:timers()), timers(pg.timers(conn)))
    assert.same(parked(r:parked()), parked(pg.parked(conn)))
    assert.same(letters(r:dead_letters(), kept), letters(pg.dead_letters(conn)))
  end

  for _, case in ipairs { { "park", 1 }, { "park", 4 }, { "dead_letter", 1 }, { "dead_letter", 4 } } do
    local on_error, partitions = case[1], case[2]
    it(string.format("gives the same flows, outbox, timers, parked flows, dead letters and hook calls "
                     .. "(on_error = %q, %d partitions); then skip agrees", on_error, partitions), function()
      local conn = assert(pg.connect(conninfo))
      finally(function() conn:close() end)
      h.reset(conn, pg)
      broken.on = true
      local r, kept, r_calls = run_router(on_error)
      local w, w_calls = run_worker(conn, on_error, partitions)
      finally(function() w:close() end)
      same(r, kept, conn)
      assert.same(r_calls, w_calls)
      assert.same(on_error == "park" and { 4, 6, 7, 11, 12, 20 } or { 4, 6, 7, 8, 11, 12, 20 },
                  letter_ids(pg.dead_letters(conn)))
      assert.equal(on_error == "park" and 1 or 0, #pg.parked(conn))
      if on_error == "park" then
        -- skip the failing event: the held ones (the add, the fired expiry) follow, in order
        assert.same({ 2 }, { w:skip("account", 7) })
        r:skip("account", 7)
        same(r, kept, conn)
        assert.same({}, pg.parked(conn))
        assert.same(r_calls, w_calls)
      end
    end)
  end

  -- Versions, policies and hooks. A ticket flow started on version 1 stays
  -- on it when version 2 (which adds 'escalate') is deployed; new tickets
  -- start on version 2. Both runtimes get the code change between two
  -- phases (the router through its journal, the worker through the store).
  local function ticket(version)
    local on = {
      open = function(state, e)
        if e.flaky and broken.on then error("cannot open yet", 0) end
        state.notes = 0
        return { { command_type = "opened", v = version } }
      end,
      note = function(state, e)
        if e.text == "bad" then error("bad note", 0) end
        state.notes = state.notes + 1
        return { procman.after(5, { event_type = "remind" }, "remind") }
      end,
      remind = function(state) state.reminded = version end,
      close = function(state) state.closed = true end,
    }
    if version >= 2 then on.escalate = function(state) state.escalated = true return { { command_type = "page" } } end end
    return procman.workflow { name = "ticket", version = version, correlate = "ticket", starts = { "open" }, on = on,
                              done = function(state) return state.closed == true end,
                              status = function(state) return state.closed and "closed" or "open" end }
  end
  local v1, v2 = ticket(1), ticket(2)

  local phase1 = {
    { event_type = "open", ticket = "t1" },
    { event_type = "note", ticket = "t1", text = "a" },
    { event_type = "open", ticket = "done" },
    { event_type = "close", ticket = "done" },
    { event_type = "open", ticket = "p1", flaky = true },   -- parks on its first event, under version 1
  }
  local phase2 = {
    { event_type = "open", ticket = "t2" },                 -- starts on version 2
    { event_type = "escalate", ticket = "t1" },             -- t1 runs version 1: no handler (on_unknown)
    { event_type = "escalate", ticket = "t2" },
    { event_type = "noise", ticket = "t1" },                -- no workflow handles it (on_unknown)
    { event_type = "note", ticket = "t1", text = "b" },     -- version 1's handler
    { event_type = "note", ticket = "t2", text = "bad" },   -- parks t2
    { event_type = "note", ticket = "done", text = "c" },   -- late (on_late)
    { event_type = "escalate", ticket = "t3" },             -- no flow, and version 2 cannot start one
    { event_type = "open", ticket = "t4" },
    { event_type = "note", ticket = "t4", text = "bad" },   -- parks t4
    { event_type = "close", ticket = "t4" },                -- held; completes t4 once the bad note is skipped
    { event_type = "note", ticket = "t4", text = "d" },     -- held; a dead letter when t4 completes
  }
  for i, e in ipairs(phase1) do e.event_id = "p1-" .. i end
  for i, e in ipairs(phase2) do e.event_id = "p2-" .. i end

  local function versions_flows(r_or_conn, is_router)
    local out = {}
    for _, id in ipairs { "t1", "t2", "t3", "t4", "p1", "done" } do
      if is_router then
        local pm = r_or_conn:flow("ticket", id)
        if pm then
          out[#out + 1] = { id, pm:status(), pm:version(), pm:state(), r_or_conn:flow_version("ticket", id) }
        elseif r_or_conn:completed("ticket", id) then
          out[#out + 1] = { id, "done" }
        end
      else
        local f = pg.flow(r_or_conn, "ticket", id)
        if f and f.done then out[#out + 1] = { id, "done" }
        elseif f then out[#out + 1] = { id, f.status, f.version, f.state, f.workflow_version } end
      end
    end
    return out
  end

  local function run_both(policy, conn)
    local path = os.tmpname()
    finally(function() os.remove(path) end)
    local clock = function() return 2000 end
    local r = assert(procman.router { workflows = { v1 }, journal = path, on_error = "park", clock = clock,
                                      on_unroutable = "dead_letter", on_unknown = policy.on_unknown,
                                      on_late = policy.on_late })
    local w = pg.worker { conninfo = conninfo, workflows = { v1 }, partitions = 1, on_error = "park",
                          clock = clock, on_unknown = policy.on_unknown, on_late = policy.on_late }
    for _, e in ipairs(phase1) do r:handle(e) assert(pg.append(conn, e)) end
    while w:step() > 0 do end
    r:close()
    w:close()
    -- the code changes: version 2 is deployed beside version 1
    local r_calls, r_hooks = recorder()
    local w_calls, w_hooks = recorder()
    r = assert(procman.router { workflows = { v1, v2 }, journal = path, on_error = "park", clock = clock,
                                on_unroutable = "dead_letter", on_unknown = policy.on_unknown,
                                on_late = policy.on_late, hooks = r_hooks })
    w = pg.worker { conninfo = conninfo, workflows = { v1, v2 }, partitions = 1, on_error = "park",
                    clock = clock, on_unknown = policy.on_unknown, on_late = policy.on_late, hooks = w_hooks }
    for _, e in ipairs(phase2) do r:handle(e) assert(pg.append(conn, e)) end
    while w:step() > 0 do end
    r:tick(2005)
    assert.equal(1, w:tick(2005))
    for _, id in ipairs { "t2", "t4" } do
      r:skip("ticket", id)
      w:skip("ticket", id)
    end
    broken.on = false  -- fixed: p1 opens, on the version it parked on
    r:resume("ticket", "p1")
    w:resume("ticket", "p1")
    broken.on = true
    return r, w, r_calls, w_calls
  end

  for _, policy in ipairs { { on_unknown = "dead_letter" }, { on_unknown = "ignore", on_late = "ignore" } } do
    it(string.format("keeps flows on the version they started on; on_unknown = %q, on_late = %q and the hooks "
                     .. "agree", policy.on_unknown, policy.on_late or "dead_letter"), function()
      local conn = assert(pg.connect(conninfo))
      finally(function() conn:close() end)
      h.reset(conn, pg)
      local r, w, r_calls, w_calls = run_both(policy, conn)
      finally(function() r:close() w:close() end)
      assert.same(versions_flows(r, true), versions_flows(conn, false))
      assert.same({ 1, 2, 1 }, { r:flow_version("ticket", "t1"), r:flow_version("ticket", "t2"),
                                 r:flow_version("ticket", "p1") })
      assert.same(commands(r:pending()), commands(pg.outbox(conn)))
      assert.same(timers(r:timers()), timers(pg.timers(conn)))
      assert.same(parked(r:parked()), parked(pg.parked(conn)))
      assert.same(letters(r:dead_letters()), letters(pg.dead_letters(conn)))
      assert.equal(policy.on_unknown == "dead_letter" and 5 or 2, #pg.dead_letters(conn))
      assert.same(r_calls, w_calls)
      assert.is_true(#w_calls > 10)
    end)
  end

  -- Two workers: an event whose flows lie in partitions of different
  -- workers. Each takes its own flows' part (the router's owns hook);
  -- what is judged for the event as a whole is judged once.
  it("two workers: each takes its own flows' part of an event, and one keeps its judgement as a whole", function()
    local conn = assert(pg.connect(conninfo))
    finally(function() conn:close() end)
    h.reset(conn, pg)
    broken.on = true
    local opts = { conninfo = conninfo, workflows = { account, audit }, partitions = 3, on_unknown = "dead_letter" }
    local w1, w2 = pg.worker(opts), pg.worker(opts)
    finally(function() w1:close() w2:close() end)
    assert.same({ 2, 1 }, { w1:claim(), w2:claim() })
    local mine = {}
    for _, p in ipairs(w2:owned_partitions()) do mine[p] = true end
    local routes, x = require "procman.pg.routes", 1
    while mine[routes.partition("account", x, 3)] == mine[routes.partition("audit", x, 3)] do x = x + 1 end
    for i, e in ipairs { { event_type = "open", acct = x }, { event_type = "add", acct = x, amount = -1 },
                         { event_type = "add", acct = x, amount = 4 }, { event_type = "noise", acct = x },
                         { event_type = "add" } } do
      e.event_id = "two-" .. i
      assert(pg.append(conn, e))
    end
    while w1:step() + w2:step() > 0 do end
    -- audit/x took the add that account/x refused (the router, with "raise", refuses it for both)
    assert.same({ 3, { n = 3 } }, { pg.flow(conn, "audit", x).version, pg.flow(conn, "audit", x).state })
    assert.same({ 2, 4 }, { pg.flow(conn, "account", x).version, pg.flow(conn, "account", x).state.balance })
    local dead = pg.dead_letters(conn)
    table.sort(dead, function(a, b) return a.event.event_id < b.event.event_id end)
    assert.same({ "two-2", "two-4", "two-5" }, { dead[1].event.event_id, dead[2].event.event_id,
                                                  dead[3].event.event_id })
    assert.same({ "account", x, string.format("account/%d: handler for 'add' failed: negative amount -1", x) },
                { dead[1].workflow, dead[1].flow, dead[1].error })
    assert.equal("procman.router: no workflow handles event type 'noise'", dead[2].error)
    assert.matches("lacks the field acct", dead[3].error)
  end)
end)
