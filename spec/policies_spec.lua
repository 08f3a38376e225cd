-- Router policies: on_unknown (event types no workflow handles), on_late
-- (new events for completed flows), and the routing rule of DESIGN.md: a
-- completed target never keeps an event from live flows of other
-- workflows. Also: a due time that would overflow an integer clock.
local procman = require "procman"
local files = require "spec.support.files"
local routers = require "spec.support.routers"

-- Two workflows that both take 'user_deleted': accounts (done on it) and
-- audit (which keeps logging).
local accounts = procman.workflow {
  name = "accounts", correlate = "user", starts = { "user_created" },
  on = {
    user_created = function(state) state.status = "active" end,
    user_deleted = function(state) state.status = "deleted" end,
  },
  done = function(state) return state.status == "deleted" end,
}
local audit = procman.workflow {
  name = "audit", correlate = "user", starts = { "user_created" },
  on = {
    user_created = function(state) state.n = 1 end,
    user_deleted = function(state)
      state.n = state.n + 1
      return { { command_type = "log", n = state.n } }
    end,
  },
}

local function router(opts, path)
  opts.workflows = opts.workflows or { accounts, audit }
  opts.journal = path
  return procman.router(opts)
end

describe("router policies", function()
  local path
  files.journal_each_test(function(p) path = p end)

  describe("on_unknown", function()
    it("ignores an event type no workflow handles, by default", function()
      local r = router({}, path)
      assert.same({}, r:handle { event_type = "user_creatd", user = "u" })
      assert.is_false(r:handles("user_creatd"))
      assert.is_true(r:handles("user_deleted"))
      assert.equal(0, r:stats().journal_bytes - 16)
      r:close()
    end)

    it("raises, changing nothing", function()
      local r = router({ on_unknown = "raise" }, path)
      routers.refuses(r, { event_type = "user_creatd", user = "u" },
                      "procman.router: no workflow handles event type 'user_creatd'")
      r:close()
    end)

    it("keeps a dead letter, journaled", function()
      local r = router({ on_unknown = "dead_letter", clock = function() return 7 end }, path)
      assert.same({}, r:handle { event_type = "user_creatd", user = "u" })
      r:close()
      r = router({ on_unknown = "dead_letter" }, path)
      assert.same({ { id = 1, time = 7, event = { event_type = "user_creatd", user = "u" },
                      error = "procman.router: no workflow handles event type 'user_creatd'" } },
                  r:dead_letters())
      r:close()
    end)

    it("is checked", function()
      local ok, err = pcall(router, { on_unknown = "drop" }, path)
      assert.is_false(ok)
      assert.equal('procman.router: on_unknown must be "ignore", "dead_letter" or "raise", got drop', err)
    end)
  end)

  describe("on_late and the routing rule", function()
    -- 'u' is complete in accounts and live in audit
    local function setup(opts)
      local r = router(opts, path)
      r:handle { event_type = "user_created", user = "u" }
      r:handle { event_type = "user_deleted", user = "u", event_id = "d1" }
      r:dispatch(function() end)
      return r
    end

    it("applies an event to live flows although its target in another workflow completed", function()
      local r = setup {}  -- on_late = "raise"
      local out = r:handle { event_type = "user_deleted", user = "u", event_id = "d2" }
      assert.same({ { command_type = "log", n = 3 } }, { out[1].command })
      assert.equal(0, #r:dead_letters())
      r:close()
      r = router({}, path)  -- and so after a restart
      assert.equal(3, r:flow("audit", "u"):state().n)
      r:close()
    end)

    it("raises, changing nothing, only when the event reached no live flow", function()
      local r = setup { workflows = { accounts } }
      routers.refuses(r, { event_type = "user_deleted", user = "u", event_id = "d2" },
                      "procman.router: flow accounts/u is complete (deleted): event 'user_deleted' came after it finished")
      assert.same({}, r:handle { event_type = "user_deleted", user = "u", event_id = "d1" })  -- redelivered
      r:close()
    end)

    it("ignores the late part", function()
      local r = setup { workflows = { accounts }, on_late = "ignore" }
      assert.same({}, r:handle { event_type = "user_deleted", user = "u", event_id = "d2" })
      assert.equal(0, #r:dead_letters())
      r:close()
    end)

    it("keeps the late part as a dead letter, in the same record as the live part", function()
      local r = setup { on_late = "dead_letter" }
      local out = r:handle { event_type = "user_deleted", user = "u", event_id = "d2" }
      assert.equal(1, #out)
      local letters = r:dead_letters()
      assert.equal(1, #letters)
      assert.equal("procman.router: flow accounts/u is complete (deleted): event 'user_deleted' came after it "
                   .. "finished", letters[1].error)
      r:close()
      r = router({ on_late = "dead_letter" }, path)
      assert.same(letters, r:dead_letters())
      assert.equal(3, r:flow("audit", "u"):state().n)
      r:close()
      assert.same(letters, require("procman.journal_view").read(path).dead.list)
    end)

    it("keeps a late event that reached no live flow as a dead letter", function()
      local r = setup { workflows = { accounts }, on_late = "dead_letter" }
      assert.same({}, r:handle { event_type = "user_deleted", user = "u", event_id = "d2" })
      assert.equal(1, #r:dead_letters())
      r:close()
    end)

    it("is checked", function()
      local ok, err = pcall(router, { on_late = "park" }, path)
      assert.is_false(ok)
      assert.equal('procman.router: on_late must be "raise", "ignore" or "dead_letter", got park', err)
    end)
  end)

  it("lists a dead letter whose event is nested as deep as a letter can hold", function()
    local function nested(n)
      local v = {}
      for _ = 1, n do v = { v } end
      return v
    end
    -- the deepest event still kept as a letter: one deeper is not data
    local deepest
    for n = 1, 200 do
      local r = procman.router { workflows = { accounts }, on_unroutable = "dead_letter" }
      if not pcall(r.handle, r, { event_type = "user_created", deep = nested(n) }) then break end
      deepest = n
    end
    assert.is_true(deepest > 90)
    local r = router({ on_unroutable = "dead_letter" }, path)
    assert.same({}, r:handle { event_type = "user_created", deep = nested(deepest) })
    local letters = r:dead_letters()
    assert.equal(1, #letters)
    assert.same(nested(deepest), letters[1].event.deep)
    r:close()
    r = router({ on_unroutable = "dead_letter" }, path)  -- and from the journal
    assert.equal(1, #r:dead_letters())
    r:close()
  end)

  it("refuses a due time that would overflow an integer clock, changing nothing", function()
    local wf = procman.workflow {
      name = "t", correlate = "id", starts = { "go" },
      on = { go = function(_, e) return { procman.after(e.s, { event_type = "go", id = e.id }) } end },
    }
    local r = procman.router { workflows = { wf }, journal = path, clock = function() return 1000 end }
    routers.refuses(r, { event_type = "go", id = 1, s = math.maxinteger },
                    "procman.router: t/1: handler for 'go' returned a bad timer directive: procman.after("
                    .. math.maxinteger .. "): the due time overflows the integer clock (now 1000)")
    assert.same({}, r:handle { event_type = "go", id = 2, s = math.maxinteger - 1000 })
    assert.equal(math.maxinteger, r:timers()[1].due)
    r:close()
  end)
end)
