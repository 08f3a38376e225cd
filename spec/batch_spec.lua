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
    it("a bad file list: the same error whatever order its pairs come in", function()
      -- a map, not an array: its copy keeps every key in the hash part, in no set order
      for _ = 1, 20 do
        local pm = batch:new("b1")
        flow.refuses(pm, { event_type = "batch_created", files = { x = "b", [1] = "a", [2] = 3, y = "c" } },
                     "files[2] must be a non-empty string, got number")
        flow.refuses(pm, { event_type = "batch_created", files = { x = "b", [1] = "a", [2] = "a", y = "c" } },
                     'file "a" is listed twice (files[1] and files[2])')
        flow.refuses(pm, { event_type = "batch_created", files = { z = "b", [1] = "a", [2] = "d" } },
                     "files must be an array, but has the key z")
        assert.equal("idle", pm:status())
        assert.same({}, pm:state().files)
      end
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

describe("procman.workflows.batch retries and timeouts", function()
  local procman = require "procman"
  local given = require("procman.testing").given

  local function batch_event(opts)
    local e = { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
    for k, v in pairs(opts or {}) do e[k] = v end
    return e
  end
  local function processed(id, status, attempt)
    return { event_type = "file_processed", batch_id = "b1", file = { id = id, status = status, attempt = attempt } }
  end
  local function timed_out(id, attempt)
    return { event_type = "file_timed_out", batch_id = "b1", file = id, attempt = attempt }
  end

  it("keeps the seed's commands and state with the default options", function()
    local s = given(batch, {}):when(batch_event())
      :expect { { command_type = "process_file", file = "a" }, { command_type = "process_file", file = "b" } }
      :when(processed("a", "error")):expect {}
    assert.equal("error", s:flow():status())
    assert.same({ id = "b1", files = { a = "error", b = "pending" }, status = "error" }, s:flow():state())
    given(batch, {}):when(batch_event { max_attempts = 1 })
      :expect { { command_type = "process_file", file = "a" }, { command_type = "process_file", file = "b" } }
  end)

  it("sends a failed file again while it has attempts left, then fails it", function()
    local s = given(batch, { batch_event { max_attempts = 3 } })
      :when(processed("a", "error")):expect { { command_type = "process_file", file = "a", attempt = 2 } }
    assert.equal("pending", s:flow():status())
    assert.same({ a = "pending", b = "pending" }, s:flow():state().files)
    s:when(processed("a", "error")):expect { { command_type = "process_file", file = "a", attempt = 3 } }
     :when(processed("b", "success")):expect {}
    assert.equal("pending", s:flow():status())
    s:when(processed("a", "error")):expect {}
    assert.equal("error", s:flow():status())
    assert.is_true(s:flow():done())
    assert.same({ id = "b1", files = { a = "error", b = "success" }, status = "error" }, s:flow():state())
  end)

  it("succeeds when a retry succeeds", function()
    local s = given(batch, { batch_event { max_attempts = 2 }, processed("a", "error"), processed("b", "success") })
      :when(processed("a", "success", 2)):expect {}
    assert.equal("success", s:flow():status())
  end)

  it("ignores a late failure of an attempt already retried", function()
    local s = given(batch, { batch_event { max_attempts = 3 }, processed("a", "error") })
      :when(processed("a", "error", 1)):expect {}
      :when(processed("a", "error", 2)):expect { { command_type = "process_file", file = "a", attempt = 3 } }
    assert.equal("pending", s:flow():status())
    s:when(processed("a", "error", "x")):expect_error('file "a": attempt must be an integer, got x')
  end)

  it("times out a file with no result, through a stimulus event", function()
    local tick = function(id, attempt) return { event_type = "file_timed_out", batch_id = "b1", file = id, attempt = attempt } end
    local s = given(batch, {}):when(batch_event { file_timeout = 60, max_attempts = 2 })
      :expect { { command_type = "process_file", file = "a" }, procman.after(60, tick("a", 1), "timeout:a"),
                { command_type = "process_file", file = "b" }, procman.after(60, tick("b", 1), "timeout:b") }
      :after(30)
      :when(processed("b", "success")):expect { procman.cancel("timeout:b") }
      :after(30)
      :expect { { command_type = "process_file", file = "a", attempt = 2 }, procman.after(60, tick("a", 2), "timeout:a") }
      :after(59):expect {}
      :after(1):expect {}
    assert.equal("error", s:flow():status())
    assert.same({ a = "error", b = "success" }, s:flow():state().files)
  end)

  it("ignores a stale timeout, and refuses one for a file not in the batch", function()
    given(batch, { batch_event { file_timeout = 5, max_attempts = 2 }, processed("a", "error") })
      :when(timed_out("a", 1)):expect {}
      :when(timed_out("zz", 1)):expect_error("file_timed_out: file zz is not in this batch")
    given(batch, { batch_event { file_timeout = 5 }, processed("a", "success") })
      :when(timed_out("a", 1)):expect {}
  end)

  it("refuses bad options, changing nothing", function()
    given(batch, {}):when(batch_event { max_attempts = 0 }):expect_error("max_attempts must be a positive integer, got 0")
    given(batch, {}):when(batch_event { max_attempts = 1.5 }):expect_error("max_attempts must be a positive integer")
    given(batch, {}):when(batch_event { file_timeout = -1 }):expect_error("file_timeout must be a positive number of seconds, got -1")
    given(batch, {}):when(batch_event { file_timeout = "1m" }):expect_error("file_timeout must be a positive number")
  end)

  it("retries through the router, timers journaled, across a restart", function()
    local files = require "spec.support.files"
    local path = files.temp_path()
    local now = 100
    local r = procman.router { workflows = { batch }, journal = path, clock = function() return now end }
    r:handle(batch_event { file_timeout = 60, max_attempts = 2 })
    assert.equal(2, #r:pending())
    assert.equal(2, #r:timers())
    r:close()
    r = procman.router { workflows = { batch }, journal = path, clock = function() return now end }
    local out = r:tick(160)
    assert.same({ { command_type = "process_file", file = "a", attempt = 2 },
                  { command_type = "process_file", file = "b", attempt = 2 } }, { out[1].command, out[2].command })
    assert.same({ 220, 220 }, { r:timers()[1].due, r:timers()[2].due })
    r:handle(processed("a", "success"))
    r:handle(processed("b", "error"))
    assert.equal("error", r:completed("batch", "b1"))
    assert.same({}, r:timers())
    r:close()
    os.remove(path)
  end)
end)
