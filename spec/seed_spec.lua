-- The seed's iex session, exactly (Real-World Event Sourcing, chapter 4).
local batch = require "procman.workflows.batch"

describe("the seed session", function()
  it("gives the seed's commands, results and final state", function()
    local pm = batch:new("batch1")
    assert.same({
      { command_type = "process_file", file = "f1" },
      { command_type = "process_file", file = "f2" },
      { command_type = "process_file", file = "f3" },
    }, pm:handle { event_type = "batch_created", files = { "f1", "f2", "f3" } })
    assert.same({}, pm:handle { event_type = "file_processed", file = { id = "f1", status = "success" } })
    assert.same({}, pm:handle { event_type = "file_processed", file = { id = "f2", status = "success" } })
    assert.same({}, pm:handle { event_type = "file_processed", file = { id = "f3", status = "success" } })
    assert.same({
      id = "batch1",
      files = { f1 = "success", f2 = "success", f3 = "success" },
      status = "success",
    }, pm:state())
    assert.equal("success", pm:status())
    assert.equal(4, pm:version())
    assert.equal("procman.pm: batch/batch1 (success, v4)", tostring(pm))
  end)

  it("shows the intermediate state of DESIGN.md", function()
    local pm = batch:new("batch1")
    pm:handle { event_type = "batch_created", files = { "f1", "f2", "f3" } }
    pm:handle { event_type = "file_processed", file = { id = "f1", status = "success" } }
    assert.same({ id = "batch1", files = { f1 = "success", f2 = "pending", f3 = "pending" },
                  status = "pending" }, pm:state())
  end)
end)
