--- The check of a multi-process run of the pg workload: the events in the
-- store's order, run in memory, must give exactly the stored flows, and
-- the outbox must hold each expected command id once.
local procman = require "procman"
local core = require "procman.core"
local pg = require "procman.pg"
local assert = require "luassert"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"

local M = {}

function M.check(conn, flows)
  local ref, expected_ids = { batch = {}, order = {} }, {}
  local rows = assert(conn:exec("SELECT payload FROM procman_events ORDER BY xid, position"))
  for _, row in ipairs(rows) do
    local e = procman.decode(row.payload)
    local wf, id = e.batch_id and batch or order, e.batch_id or e.order_id
    local pm = ref[wf.name][id] or wf:new(id)
    ref[wf.name][id] = pm
    for i = 1, #pm:handle(e) do expected_ids[string.format("%s/%s/%d/%d", wf.name, id, pm:version(), i)] = true end
  end
  local n_flows = 0
  for _, name in ipairs { "batch", "order" } do
    for _, f in ipairs(pg.flows(conn, name)) do
      n_flows = n_flows + 1
      local pm = ref[name][f.flow]
      assert(f.done, name .. "/" .. tostring(f.flow) .. " is not done")
      assert(pm:version() == f.version, "version of " .. tostring(f.flow))
      assert(pm:status() == f.status, "status of " .. tostring(f.flow))
      local stored = pg.flow(conn, name, f.flow)
      assert.same((core.snapshot(pm)), stored.state)
    end
  end
  assert.equal(flows, n_flows)
  assert.same({}, pg.dead_letters(conn))
  local outbox, n = pg.outbox(conn), 0
  for _ in pairs(expected_ids) do n = n + 1 end
  assert.equal(n, #outbox)
  local seen = {}
  for _, o in ipairs(outbox) do
    assert.is_true(expected_ids[o.id], o.id)
    assert.is_nil(seen[o.id], o.id .. " twice")
    seen[o.id] = true
  end
end

return M
