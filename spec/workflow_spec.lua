-- procman.workflow: checking definitions.
local procman = require "procman"

local function handler() end

local function refused(def, pattern)
  local ok, err = pcall(function() local wf = procman.workflow(def); return wf end)
  assert.is_false(ok, "expected the definition to be refused")
  assert.is_string(err)
  if not err:find(pattern, 1, true) then
    error(string.format("error %q does not contain %q", err, pattern), 2)
  end
  return err
end

describe("procman.workflow", function()
  it("builds a workflow with its fields and new()", function()
    local init = function(id) return { id = id } end
    local wf = procman.workflow { name = "w", on = { a = handler }, init = init, correlate = "w_id",
                                  starts = { "a" } }
    assert.equal("w", wf.name)
    assert.equal(init, wf.init)
    assert.equal("w_id", wf.correlate)
    assert.same({ "a" }, wf.starts)
    assert.same({ a = handler }, wf.on)
    assert.equal("procman.workflow: w", tostring(wf))
    assert.is_true(procman.is_workflow(wf))
    assert.is_false(procman.is_workflow({}))
    assert.is_true(wf:handles("a"))
    assert.is_false(wf:handles("b"))
    assert.equal("procman.pm", getmetatable(wf:new("x")).__name)
  end)

  it("is frozen: later changes to the definition or the workflow change nothing", function()
    local on = { a = function(s) s.hit = "a" end }
    local wf = procman.workflow { name = "w", on = on }
    on.a = function(s) s.hit = "changed" end
    wf.on.a = function(s) s.hit = "changed too" end
    local pm = wf:new("x")
    pm:handle { event_type = "a" }
    assert.equal("a", pm:state().hit)
    assert.has_error(function() wf.name = "z" end, "procman.workflow 'w' is read-only (tried to set \"name\")")
  end)

  it("reports errors at the caller's line", function()
    local err = refused({ on = { a = handler } }, "name must be a non-empty string, got nil")
    assert.matches("^spec/workflow_spec%.lua:%d+: procman%.workflow: ", err)
  end)

  it("refuses a definition that is not a table", function()
    refused(nil, "procman.workflow: the definition must be a table, got nil")
    refused("batch", 'the definition must be a table, got "batch"')
  end)

  it("refuses a missing or bad name", function()
    refused({ name = "", on = { a = handler } }, 'name must be a non-empty string, got ""')
    refused({ name = 3, on = { a = handler } }, "name must be a non-empty string, got number")
    refused({ name = "a/b", on = { a = handler } }, "must not contain '/'")
  end)

  it("refuses a missing, empty or bad on", function()
    refused({ name = "w" }, "procman.workflow 'w': on must be a table of handlers by event type, got nil")
    refused({ name = "w", on = {} }, "on must have at least one handler")
    refused({ name = "w", on = { a = "x" } }, 'on.a must be a function(state, event), got "x"')
    refused({ name = "w", on = { handler } }, "on has a key number: event types are non-empty strings")
    refused({ name = "w", on = { [""] = handler } }, 'on has a key "": event types are non-empty strings')
  end)

  it("refuses unknown fields, suggesting the right one", function()
    refused({ name = "w", on = { a = handler }, start = { "a" } }, "unknown field \"start\" (did you mean 'starts'?)")
    refused({ name = "w", on = { a = handler }, intt = handler }, "(did you mean 'init'?)")
    refused({ name = "w", on = { a = handler }, zzzzzzz = 1 }, "unknown field \"zzzzzzz\"; the fields are name, on,")
    refused({ name = "w", on = { a = handler }, [1] = 1 }, "unknown field number")
  end)

  it("refuses optional fields of the wrong type", function()
    for _, field in ipairs({ "init", "done", "status", "view" }) do
      refused({ name = "w", on = { a = handler }, [field] = 1 }, field .. " must be a function, got number")
    end
    refused({ name = "w", on = { a = handler }, correlate = 1 }, "correlate must be an event field name or a function(event), got number")
    refused({ name = "w", on = { a = handler }, correlate = "" }, 'correlate must be an event field name or a function(event), got ""')
  end)

  it("refuses starts that are not handled event types", function()
    refused({ name = "w", on = { a = handler }, starts = "a" }, "starts must be an array of event types, got \"a\"")
    refused({ name = "w", on = { a = handler }, starts = { "b" } }, 'starts[1] is "b", which has no handler in on')
    refused({ name = "w", on = { a = handler }, starts = { "a", x = "a" } }, "starts must be an array, but has the key \"x\"")
  end)

  it("new() must be called with a colon", function()
    local wf = procman.workflow { name = "w", on = { a = handler } }
    assert.has_error(function() wf.new("x") end, "procman.workflow: new must be called as wf:new(id)")
  end)
end)
