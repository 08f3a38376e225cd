-- r:dispatch and r:ack (csrc/outbox.c): what the gateway receives is
-- exactly what r:pending() shows, fresh tables each time, whatever the
-- strings the dispatch shares from one envelope to the next (its memo);
-- the acks the outbox journals itself (a router without hooks) are the
-- records of the Lua path (a router with hooks), byte for byte, whatever
-- the id's encoding, and go to the journal the router has at the time.
local procman = require "procman"
local core = require "procman.core"

local files = require "spec.support.files"

-- A flow per event; each command carries the event's fields as they are.
local echo = procman.workflow {
  name = "echo", correlate = "k", starts = { "say" },
  on = {
    say = function(_, event)
      local commands = {}
      for i, v in ipairs(event.values) do
        commands[i] = { command_type = event.type or "said", value = v, at = i }
      end
      return commands
    end,
  },
}

local function router(path, hooks, sync)
  return assert(procman.router { workflows = { echo }, journal = path, sync = sync or "none",
                                 hooks = hooks })
end

-- flow ids making ids of each encoding: fixstr, str8 (32..255 bytes),
-- str16 (256 and more), bin (not UTF-8)
local FLOWS = { "f", string.rep("s", 20), string.rep("l", 40), string.rep("h", 300), "z\255" }

-- Every pair of a table, nested ones as copies (pairs/next: the same keys
-- and values, nothing more), and whether two tables are the same object.
local function pairs_of(t)
  local out = {}
  for k, v in pairs(t) do out[k] = type(v) == "table" and pairs_of(v) or v end
  return out
end

describe("r:dispatch", function()
  local temp = files.temps_each_test()

  -- Strings that share a slot of the dispatch's memo (same length, same
  -- first, middle and last bytes), recur, or are too long to remember.
  local VALUES = { "abxa", "acxa", "abxa", "", "acxa", string.rep("m", 40), string.rep("m", 41),
                   "z\0\255", 7, "abxa" }

  it("hands fn what r:pending() shows, fresh tables each time", function()
    local r = router(temp())
    r:handle { event_type = "say", k = "f1", values = VALUES }
    r:handle { event_type = "say", k = "abxa", type = "acxa", values = { "abxa", "abxa" } }
    local pending = r:pending()
    assert.equal(#VALUES + 2, #pending)
    local seen, tables = {}, {}
    assert.equal(#pending, r:dispatch(function(command, envelope)
      assert.equal(envelope.command, command)
      for _, t in ipairs { command, envelope } do
        assert.is_nil(tables[t])
        tables[t] = true
      end
      seen[#seen + 1] = pairs_of(envelope)
      command.value = "changed"  -- a copy: nothing of it reaches the next one
      envelope.id = nil
    end))
    local expected = {}
    for i, e in ipairs(pending) do expected[i] = pairs_of(e) end
    assert.same(expected, seen)
    assert.equal("f1", seen[1].flow)
    assert.equal("acxa", seen[#seen].command.command_type)
    assert.equal("abxa", seen[#seen].flow)
    r:close()
  end)

  it("journals r:ack's record for every id, byte for byte, whatever its length or bytes", function()
    local flows = FLOWS
    local pd, pa = temp(), temp()
    local rd, ra = router(pd), router(pa)
    for _, r in ipairs { rd, ra } do
      for _, k in ipairs(flows) do r:handle { event_type = "say", k = k, values = { 1, 2 } } end
    end
    local ids = {}
    for _, e in ipairs(ra:pending()) do ids[#ids + 1] = e.id end
    local sent = {}
    assert.equal(#ids, rd:dispatch(function(_, e) sent[#sent + 1] = e.id end))
    assert.same(ids, sent)
    for _, id in ipairs(ids) do assert(ra:ack(id)) end
    rd:close()
    ra:close()
    assert.equal(files.bytes(pa), files.bytes(pd))
    for _, id in ipairs(ids) do
      assert.truthy(files.bytes(pd):find(core.encode { id = id }, 1, true))
    end
    local again = router(pd)
    assert.same({}, again:pending())
    again:close()
  end)

  it("journals its acks to the journal compaction put in place meanwhile", function()
    local path = temp()
    local r = router(path)
    r:handle { event_type = "say", k = "f", values = { 1, 2, 3, 4 } }
    local before, journals = r.journal, {}
    assert.equal(4, r:dispatch(function(_, e)
      if e.command.at == 2 then assert(r:compact()) end
      journals[#journals + 1] = r.journal
    end))
    assert.are_not.equal(before, journals[2])
    assert.equal(0, r:stats().pending)
    r:close()
    local again = router(path)
    assert.same({}, again:pending())
    again:close()
  end)
end)

describe("r:ack", function()
  local temp = files.temps_each_test()

  -- Two routers with the same commands pending, one acking through Lua
  -- (it has a hook), and their ids.
  local function twins()
    local pc, pl, appended = temp(), temp(), 0
    local rc = router(pc)
    local rl = router(pl, { journal_append = function() appended = appended + 1 end })
    for _, r in ipairs { rc, rl } do
      for _, k in ipairs(FLOWS) do r:handle { event_type = "say", k = k, values = { 1, 2 } } end
    end
    local ids = {}
    for _, e in ipairs(rc:pending()) do ids[#ids + 1] = e.id end
    return rc, rl, pc, pl, ids, function() return appended end
  end

  it("journals the Lua path's record for every id, byte for byte, and forgets the command", function()
    local rc, rl, pc, pl, ids, appended = twins()
    local before = appended()
    for i = #ids, 1, -1 do  -- any order
      assert.is_true(rc:ack(ids[i]))
      assert.is_true(rl:ack(ids[i]))
      assert.equal(i - 1, rc:stats().pending)
    end
    assert.equal(#ids, appended() - before)  -- the hooked one went through Lua
    rc:close()
    rl:close()
    assert.equal(files.bytes(pl), files.bytes(pc))
    local again = router(pc)
    assert.same({}, again:pending())
    again:close()
  end)

  it("raises for an id that is not pending, as the Lua path does, and changes nothing", function()
    local rc, rl, pc, pl, ids = twins()
    assert.is_true(rc:ack(ids[1]))
    assert.is_true(rl:ack(ids[1]))
    for _, id in ipairs { ids[1], "nope", 7, false } do
      local message = "procman.router: no pending command with id " .. tostring(id)
      assert.has_error(function() rc:ack(id) end, message)
      assert.has_error(function() rl:ack(id) end, message)
    end
    assert.equal(#ids - 1, rc:stats().pending)
    rc:close()
    rl:close()
    assert.equal(files.bytes(pl), files.bytes(pc))
  end)

  it("in memory, forgets the command and nothing else", function()
    local r = assert(procman.router { workflows = { echo } })
    r:handle { event_type = "say", k = "f", values = { 1, 2, 3 } }
    local ids = {}
    for _, e in ipairs(r:pending()) do ids[#ids + 1] = e.id end
    assert.is_true(r:ack(ids[2]))
    local left = {}
    for _, e in ipairs(r:pending()) do left[#left + 1] = e.id end
    assert.same({ ids[1], ids[3] }, left)
  end)

  it("returns nil, message when the journal refuses the record: the command stays pending", function()
    local path = temp()
    local r = router(path, nil, "always")
    r:handle { event_type = "say", k = "f", values = { 1, 2 } }
    local id = r:pending()[1].id
    core.journal_faults(1, "ENOSPC")
    local ok, err = r:ack(id)
    core.journal_faults()
    assert.is_nil(ok)
    assert.matches("^procman.router: .*No space left on device", err)
    assert.equal(2, r:stats().pending)
    assert.is_true(r:ack(id))
    assert.equal(1, r:stats().pending)
    r:close()
    local again = router(path)
    assert.equal(1, #again:pending())
    again:close()
  end)
end)
