-- The shipped batch workflow: the seed's semantics and the decisions
-- DESIGN.md takes where the seed is silent.
local batch = require "procman.workflows.batch"
local flow = require "spec.support.flow"

local function created(id, files)
  local pm = batch:new(id or "b1")
  pm:handle { event_type = "batch_created", files = files or { "f1", "f2", "f3" } }
  return pm
end

local function result(pm, id, status)
  return pm:handle { event_type = "file_processed", file = { id = id, status = status } }
end

describe("procman.workflows.batch", function()
  it("is a workflow for the router: correlate, starts, done", function()
    assert.equal("batch", batch.name)
    assert.equal("batch_id", batch.correlate)
    assert.same({ "batch_created" }, batch.starts)
    assert.is_true(batch:starts_on("batch_created"))
    assert.is_false(batch:starts_on("file_processed"))
    assert.is_function(batch.done)
  end)

  it("starts idle with the seed's keys", function()
    local pm = batch:new("b1")
    assert.equal("idle", pm:status())
    assert.same({ id = "b1", files = {}, status = "idle" }, pm:state())
  end)

  it("is created, then pending, then success", function()
    local pm = created()
    assert.equal("created", pm:status())
    result(pm, "f2", "success")
    assert.equal("pending", pm:status())
    result(pm, "f1", "success")
    result(pm, "f3", "success")
    assert.equal("success", pm:status())
  end)

  it("is error as soon as any file failed, even with files pending", function()
    local pm = created()
    result(pm, "f1", "error")
    assert.equal("error", pm:status())
    result(pm, "f2", "success")
    result(pm, "f3", "success")
    assert.equal("error", pm:status())
    assert.same({ f1 = "error", f2 = "success", f3 = "success" }, pm:state().files)
  end)

  it("lets a file report again, replacing its result (the seed's Map.put)", function()
    local pm = created(nil, { "a", "b" })
    result(pm, "a", "error")
    result(pm, "b", "success")
    assert.equal("error", pm:status())
    result(pm, "a", "success")
    assert.equal("success", pm:status())
    result(pm, "a", "error")
    assert.equal("error", pm:status())
  end)

  it("is success at once for an empty batch", function()
    local pm = batch:new("b0")
    assert.same({}, pm:handle { event_type = "batch_created", files = {} })
    assert.equal("success", pm:status())
  end)

  it("is done when no file is pending", function()
    local done = batch.done
    local function raw_state(pm) return flow.raw_state(batch, pm) end
    local pm = batch:new("b1")
    assert.is_false(done(raw_state(pm)))
    pm:handle { event_type = "batch_created", files = { "a", "b" } }
    assert.is_false(done(raw_state(pm)))
    result(pm, "a", "error")
    assert.is_false(done(raw_state(pm)))
    result(pm, "b", "success")
    assert.is_true(done(raw_state(pm)))
  end)

  describe("refuses, leaving the flow unchanged", function()
    it("a second batch_created", function()
      flow.refuses(created(), { event_type = "batch_created", files = { "x" } }, "the batch was already created")
    end)
    it("file_processed before batch_created", function()
      flow.refuses(batch:new("b1"), { event_type = "file_processed", file = { id = "f1", status = "success" } },
                   "batch/b1: handler for 'file_processed' failed: the batch has not been created yet")
    end)
    it("a file not in the batch", function()
      flow.refuses(created(), { event_type = "file_processed", file = { id = "f9", status = "success" } },
                   'file "f9" is not in this batch')
    end)
    it("a result other than success or error", function()
      flow.refuses(created(), { event_type = "file_processed", file = { id = "f1", status = "done" } },
                   'file "f1" has status "done"; expected "success" or "error"')
      flow.refuses(created(), { event_type = "file_processed", file = { id = "f1" } }, "has status nil")
    end)
    it("a file_processed without a proper file", function()
      flow.refuses(created(), { event_type = "file_processed" }, "file must be a table { id = <file name>, status = ... }")
      flow.refuses(created(), { event_type = "file_processed", file = "f1" }, "file must be a table")
    end)
    it("a file listed twice", function()
      flow.refuses(batch:new("b1"), { event_type = "batch_created", files = { "a", "b", "a" } },
                   'file "a" is listed twice (files[1] and files[3])')
    end)
    it("a bad file list", function()
      local pm = batch:new("b1")
      flow.refuses(pm, { event_type = "batch_created" }, "files must be an array of file names, got nil")
      flow.refuses(pm, { event_type = "batch_created", files = { "a", 3 } }, "files[2] must be a non-empty string, got number")
      flow.refuses(pm, { event_type = "batch_created", files = { "" } }, "files[1] must be a non-empty string, got an empty string")
      flow.refuses(pm, { event_type = "batch_created", files = { "a", x = "b" } }, "files must be an array, but has the key x")
    end)
    it("an event for another batch", function()
      flow.refuses(created("b1"), { event_type = "file_processed", batch_id = "b2", file = { id = "f1", status = "success" } },
                   "event 'file_processed' belongs to flow 'b2' (event.batch_id)")
    end)
  end)

  it("keeps status in O(1) per event: counters, hidden by view", function()
    local files = {}
    for i = 1, 2000 do files[i] = "f" .. i end
    local pm = created("big", files)
    for i = 1, 1999 do result(pm, "f" .. i, "success") end
    assert.equal("pending", pm:status())
    result(pm, "f2000", "success")
    assert.equal("success", pm:status())
    local state = pm:state()
    assert.same({ "files", "id", "status" }, (function()
      local keys = {}
      for k in pairs(state) do keys[#keys + 1] = k end
      table.sort(keys)
      return keys
    end)())
  end)
end)
