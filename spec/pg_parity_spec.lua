-- procman.pg: one event sequence through the embedded router and through a
-- worker gives the same flows (status, version, state), outbox (ids and
-- commands), timers, parked flows and dead letters, for the rules the
-- worker shares with the router (docs/postgres.md, "Parity"): two
-- workflows on one event, integer and string ids (7 and "7" differ),
-- binary and very long ids, an unknown type, a missing correlation field,
-- a table as a flow id, a handler error (parking), a redelivery, a late
-- event for a completed flow, timers on a fixed clock, resume and skip.
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
      open = function(state) state.balance = 0 end,
      add = function(state, e)
        if e.amount < 0 and broken.on then error("negative amount " .. e.amount, 0) end
        state.balance = state.balance + e.amount
        return { { command_type = "credited", amount = e.amount },
                 procman.after(10, { event_type = "expire" }, "expiry") }
      end,
      expire = function(state) state.expired = true end,
      close = function(state) state.closed = true return { { command_type = "closed" } } end,
    },
    done = function(state) return state.closed == true end,
    status = function(state) return state.closed and "closed" or "open" end,
  }
  local audit = procman.workflow {
    name = "audit", correlate = "acct", starts = { "open" },
    on = { open = function(state) state.n = 1 end, close = function(state) state.n = state.n + 1 end },
  }

  local long = ("z"):rep(5000)
  local sequence = {
    { event_type = "open", acct = 7 },
    { event_type = "open", acct = "7" },
    { event_type = "add", acct = 7, amount = 5 },
    { event_type = "add", acct = "\xff\0x", amount = 1 },          -- no such flow
    { event_type = "noise", acct = 7 },                           -- no workflow handles it
    { event_type = "open" },                                      -- no correlation field
    { event_type = "open", acct = { "t" } },                      -- a table as a flow id
    { event_type = "add", acct = 7, amount = -1 },                -- fails: parks account/7
    { event_type = "add", acct = 7, amount = 2 },                 -- held behind it
    { event_type = "close", acct = "7" },                         -- completes account/"7" and audit/"7"
    { event_type = "add", acct = "7", amount = 1 },               -- late: account/"7" is complete
    { event_type = "open", acct = long },
    { event_type = "add", acct = long, amount = 3 },
  }
  for i, e in ipairs(sequence) do e.event_id = i end

  local function run_router()
    local r = procman.router { workflows = { account, audit }, on_error = "park", on_unroutable = "dead_letter",
                               clock = function() return 1000 end }
    for i, e in ipairs(sequence) do
      r:handle(e)
      if i == 3 then r:handle(e) end  -- a redelivery
    end
    r:tick(1010)
    return r
  end

  local function run_worker(conn)
    local w = pg.worker { conninfo = conninfo, workflows = { account, audit }, partitions = 1, on_error = "park",
                          clock = function() return 1000 end }
    for i, e in ipairs(sequence) do
      assert.truthy(pg.append(conn, e) ~= nil)
      if i == 3 then assert.is_false(pg.append(conn, e)) end  -- a redelivery
    end
    while w:step() > 0 do end
    w:tick(1010)
    return w
  end

  local function flows_of_router(r)
    local out = {}
    for _, name in ipairs { "account", "audit" } do
      for _, id in ipairs { 7, "7", long } do
        local pm = r:flow(name, id)
        if pm then
          out[#out + 1] = { name, id, pm:status(), pm:version(), pm:state(), false }
        elseif r:completed(name, id) then
          out[#out + 1] = { name, id, r:completed(name, id), "done", "done", true }
        end
      end
    end
    return out
  end

  local function flows_of_store(conn)
    local out = {}
    for _, name in ipairs { "account", "audit" } do
      for _, id in ipairs { 7, "7", long } do
        local f = pg.flow(conn, name, id)
        if f and f.done then
          out[#out + 1] = { name, id, f.status, "done", "done", true }
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
    for i, p in ipairs(list) do out[i] = { p.workflow, p.flow, p.error, p.event.event_id, p.held } end
    return out
  end

  local function dead(list)
    local out = {}
    for i, d in ipairs(list) do out[i] = d.event.event_id end
    table.sort(out)
    return out
  end

  it("gives the same flows, outbox, timers, parked flows and dead letters; then resume and skip agree", function()
    local conn = assert(pg.connect(conninfo))
    finally(function() conn:close() end)
    h.reset(conn, pg)
    broken.on = true
    local r = run_router()
    local w = run_worker(conn)
    assert.same(flows_of_router(r), flows_of_store(conn))
    assert.same(commands(r:pending()), commands(pg.outbox(conn)))
    assert.same(timers(r:timers()), timers(pg.timers(conn)))
    assert.same(parked(r:parked()), parked(pg.parked(conn)))
    assert.same({ 4, 6, 7, 11 }, dead(r:dead_letters()))
    assert.same(dead(r:dead_letters()), dead(pg.dead_letters(conn)))
    -- skip the failing event: the held ones (the add, the fired expiry) follow, in order
    assert.same({ 2 }, { w:skip("account", 7) })
    r:skip("account", 7)
    assert.same(flows_of_router(r), flows_of_store(conn))
    assert.same(commands(r:pending()), commands(pg.outbox(conn)))
    assert.same(timers(r:timers()), timers(pg.timers(conn)))
    assert.same({}, pg.parked(conn))
    w:close()
  end)
end)
