-- Workflow versions: several definitions of one name in a router, new
-- flows on the highest, each flow pinned to the version it started on
-- (journaled) across restarts, recovery and compaction.
local procman = require "procman"
local files = require "spec.support.files"

-- A signup flow: 'registered' starts it, 'confirmed' ends it. Version 2
-- also asks for a calendar; its 'confirmed' says which code ran.
local function signup(version)
  return procman.workflow {
    name = "signup", version = version, correlate = "user", starts = { "registered" },
    init = function(id) return { id = id, status = "new" } end,
    on = {
      registered = function(state)
        state.status = "registered"
        local out = { { command_type = "create_mailbox", user = state.id } }
        if (version or 1) >= 2 then out[2] = { command_type = "create_calendar", user = state.id } end
        return out
      end,
      confirmed = function(state)
        state.status = "done"
        return { { command_type = "welcome", user = state.id, code = version or 1 } }
      end,
    },
    done = function(state) return state.status == "done" end,
  }
end

local function commands(envelopes)
  local out = {}
  for i, e in ipairs(envelopes) do out[i] = e.command.command_type .. ":" .. tostring(e.command.code) end
  return out
end

describe("workflow versions", function()
  local path
  before_each(function() path = files.temp_path() end)
  after_each(function()
    os.remove(path)
    os.remove(path .. ".compact")
  end)

  it("are integers >= 1, 1 by default", function()
    assert.equal(1, signup().version)
    assert.equal(3, signup(3).version)
    assert.equal("procman.workflow: signup v3", tostring(signup(3)))
    for _, bad in ipairs { 0, -1, 1.5, "2", true } do
      local ok, err = pcall(procman.workflow, { name = "w", version = bad, on = { a = function() end } })
      assert.is_false(ok)
      assert.matches("procman.workflow 'w': version must be an integer >= 1, got ", err)
    end
  end)

  it("may share a name in one router, but not a version", function()
    local ok, err = pcall(procman.router, { workflows = { signup(2), signup(2) } })
    assert.is_false(ok)
    assert.equal('procman.router: workflows[2]: two workflows are named "signup" with version 2', err)
    assert.truthy(procman.router { workflows = { signup(1), signup(2) } })
  end)

  it("start new flows on the highest version and keep old flows on theirs, across restarts", function()
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "old" }
    r:close()
    -- deploy: both versions, in any order
    r = procman.router { workflows = { signup(2), signup(1) }, journal = path }
    assert.equal(1, r:flow_version("signup", "old"))
    assert.same({ "create_mailbox:nil", "create_calendar:nil" },
                commands(r:handle { event_type = "registered", user = "new" }))
    assert.equal(2, r:flow_version("signup", "new"))
    r:close()
    r = procman.router { workflows = { signup(1), signup(2) }, journal = path }  -- each replayed on its code
    assert.equal(1, r:flow_version("signup", "old"))
    assert.equal(2, r:flow_version("signup", "new"))
    assert.same({ "welcome:1" }, commands(r:handle { event_type = "confirmed", user = "old" }))
    assert.same({ "welcome:2" }, commands(r:handle { event_type = "confirmed", user = "new" }))
    assert.is_nil(r:flow_version("signup", "old"))
    assert.equal("done", r:completed("signup", "old"))
    r:close()
  end)

  it("refuse a journal whose live flows need a version not given, naming it and counting", function()
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "a" }
    r:handle { event_type = "registered", user = "b" }
    r:close()
    local bytes = files.bytes(path)
    local ok, err = pcall(procman.router, { workflows = { signup(2) }, journal = path })
    assert.is_false(ok)
    assert.equal("procman.router: " .. path .. ': the journal has 2 live flows of workflow "signup" on '
                 .. "version 1, which this router was not given (it has version 2): give it that "
                 .. "version's code too until they complete (docs/operations.md)", err)
    assert.equal(bytes, files.bytes(path))
  end)

  it("refuse a journal whose live flows belong to a workflow not given at all", function()
    local other = procman.workflow { name = "other", correlate = "user", starts = { "registered" },
                                     on = { registered = function() end } }
    local r = procman.router { workflows = { signup(1), other }, journal = path }
    r:handle { event_type = "registered", user = "a" }
    r:close()
    local ok, err = pcall(procman.router, { workflows = { signup(1) }, journal = path })
    assert.is_false(ok)
    assert.equal("procman.router: " .. path .. ': the journal has 1 live flow of workflow "other", which '
                 .. "this router was not given", err)
  end)

  it("need no code for flows that completed: v1 retires once its flows are done", function()
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "a", event_id = "e1" }
    r:dispatch(function() end)
    r:close()
    r = procman.router { workflows = { signup(1), signup(2) }, journal = path }
    r:handle { event_type = "confirmed", user = "a", event_id = "e2" }
    r:close()
    r = procman.router { workflows = { signup(2) }, journal = path }  -- v1 retired
    assert.equal("done", r:completed("signup", "a"))
    assert.same({}, r:handle { event_type = "confirmed", user = "a", event_id = "e2" })  -- redelivered
    assert.same({ "welcome:1" }, commands(r:pending()))  -- its command, still pending, with its id
    assert.equal("signup/a/2/1", r:pending()[1].id)
    r:close()
  end)

  it("do not replay nor compare completed flows: changed code for them is no divergence", function()
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "a" }
    r:handle { event_type = "confirmed", user = "a" }
    r:close()
    local changed = procman.workflow {
      name = "signup", correlate = "user", starts = { "registered" },
      on = { registered = function() return { { command_type = "other" } } end,
             confirmed = function() error("not run") end },
    }
    r = procman.router { workflows = { changed }, journal = path }  -- on_divergence = "raise"
    assert.equal("done", r:completed("signup", "a"))
    r:close()
  end)

  it("read an old journal (no versions in it) as version 1", function()
    -- a journal written before versions existed: its flows name no version
    local r = procman.router { workflows = { signup() }, journal = path }
    r:handle { event_type = "registered", user = "a" }
    r:close()
    assert.is_nil(files.bytes(path):find("workflow_version", 1, true))
    r = procman.router { workflows = { signup(1), signup(2) }, journal = path }
    assert.equal(1, r:flow_version("signup", "a"))
    r:close()
  end)

  it("survive compaction", function()
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "old" }
    r:close()
    r = procman.router { workflows = { signup(1), signup(2) }, journal = path }
    r:handle { event_type = "registered", user = "new" }
    assert.truthy(r:compact())
    r:close()
    local ok, err = pcall(procman.router, { workflows = { signup(2) }, journal = path })
    assert.is_false(ok)
    assert.matches("1 live flow of workflow \"signup\" on version 1", err, 1, true)
    r = procman.router { workflows = { signup(1), signup(2) }, journal = path }
    assert.equal(1, r:flow_version("signup", "old"))
    assert.equal(2, r:flow_version("signup", "new"))
    assert.same({ "welcome:1" }, commands(r:handle { event_type = "confirmed", user = "old" }))
    r:close()
  end)

  it("route an event only to flows whose version handles it", function()
    local v2 = procman.workflow {
      name = "signup", version = 2, correlate = "user", starts = { "registered" },
      on = { registered = function() end, audited = function() return { { command_type = "log" } } end },
    }
    local r = procman.router { workflows = { signup(1) }, journal = path }
    r:handle { event_type = "registered", user = "o" }  -- on v1, which has no 'audited'
    r:close()
    r = procman.router { workflows = { signup(1), v2 }, journal = path, on_unknown = "raise" }
    r:handle { event_type = "registered", user = "n" }  -- on v2
    assert.equal(1, #r:handle { event_type = "audited", user = "n" })
    local ok, err = pcall(r.handle, r, { event_type = "audited", user = "o" })
    assert.is_false(ok)
    assert.equal("procman.router: flow signup/o runs version 1 of signup, which has no handler for 'audited'",
                 err)
    r:close()
    -- a type only an older version handles starts no flow on the newest
    local v3 = procman.workflow { name = "signup", version = 3, correlate = "user", starts = { "joined" },
                                  on = { joined = function() end } }
    r = procman.router { workflows = { signup(1), v2, v3 }, journal = path, on_unknown = "raise" }
    ok, err = pcall(r.handle, r, { event_type = "registered", user = "z" })
    assert.is_false(ok)
    assert.equal("procman.router: no flow signup/z for registered, and version 3 of signup (new flows start on "
                 .. "it) has no handler for it", err)
    assert.equal(1, #r:handle { event_type = "audited", user = "n" })  -- v2's flow still takes it
    r:close()
  end)
end)
