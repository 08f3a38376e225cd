-- A completed flow keeps the event ids it handled as the codec's bytes
-- for their array (core.encoded_event_ids), not as a table: redeliveries
-- are found in the bytes (core.ids_include), and ids are made only when
-- asked for (procman.fold's completed_ids). The engine's step and the
-- router's Lua path keep the same bytes; recovery (the scan in C and the
-- Lua fold alone) gives the same answers.
local procman = require "procman"
local core = require "procman.core"
local fold = require "procman.fold"
local fold_scan = require "procman.fold_scan"

local files = require "spec.support.files"

-- A flow that takes any number of "step" events and completes on "stop".
local counter = procman.workflow {
  name = "counter", correlate = "c", starts = { "step" },
  init = function() return { n = 0, pad = {} } end,
  on = {
    step = function(state, event)
      state.n = state.n + 1
      if event.pad then state.pad[#state.pad + 1] = string.rep("p", 200) end
    end,
    stop = function(state) state.stopped = true end,
  },
  done = function(state) return state.stopped == true end,
  status = function(state) return state.stopped and "stopped" or "counting" end,
}

-- Every kind of id the codec writes differently: short and long strings,
-- bytes that are not UTF-8, integers of each width.
local IDS = { "s", 0, -1, 127, 128, -33, 300, 70000, 1 << 40, math.mininteger, "\xff\0",
              string.rep("l", 40), string.rep("m", 300) }

local function expected(pm)
  local ids = core.event_ids(pm)
  if #ids == 0 then return nil end
  return core.encode(ids)
end

describe("a completed flow's event ids, kept as bytes", function()
  it("are the codec's bytes for core.event_ids, however the flow remembers them", function()
    local cases = {
      none = {},
      one = { { "s" } },
      history = { { "s" }, { 7 }, { nil }, { "\xff\0" } },         -- noted in the history
      table = {},                                                  -- more: a seen table
      snapshot = {},                                               -- ids dropped with the history
    }
    for i, id in ipairs(IDS) do cases.table[i] = { id } end
    for i = 1, 40 do cases.snapshot[i] = { i % 3 == 0 and i or nil, true } end
    local blob = string.rep("b", 300)  -- long events: the history outgrows its first snapshot's threshold
    for name, events in pairs(cases) do
      local pm = counter:new(name)
      for _, e in ipairs(events) do
        pm:handle { event_type = "step", c = name, event_id = e[1], pad = e[2], blob = e[2] and blob }
      end
      if name == "snapshot" then assert.is_true(#pm:history() < #events, "no snapshot was taken") end
      assert.equal(expected(pm), core.encoded_event_ids(pm), name)
      local bytes = core.encoded_event_ids(pm)
      for _, e in ipairs(events) do
        if e[1] ~= nil then assert.is_true(core.ids_include(bytes, e[1]), name) end
      end
    end
  end)

  it("follow an undone event, a trim and a restored flow", function()
    local pm = counter:new("u")
    pm:handle { event_type = "step", c = "u", event_id = "a" }
    pm:handle { event_type = "step", c = "u", event_id = "b" }
    core.undo(pm)
    assert.equal(core.encode { "a" }, core.encoded_event_ids(pm))
    assert.is_true(core.trim(pm))
    assert.equal(core.encode { "a" }, core.encoded_event_ids(pm))
    local restored = core.restore((core.origin(pm)), "r", { n = 1, pad = {} }, 1, { "x" })
    assert.equal(core.encode { "x" }, core.encoded_event_ids(restored))
  end)

  it("are searched where they are: each id found, no other, types apart", function()
    local bytes = core.encode(IDS)
    for _, id in ipairs(IDS) do assert.is_true(core.ids_include(bytes, id)) end
    for _, other in ipairs { "S", 1, -2, "300", (1 << 40) + 1, "l", string.rep("m", 299), 1.5, 0.0, true, {} } do
      assert.is_false(core.ids_include(bytes, other), tostring(other))
    end
    local long = {}
    for i = 1, 70000 do long[i] = i end  -- an array of 32-bit length
    local big = core.encode(long)
    assert.is_true(core.ids_include(big, 70000))
    assert.is_false(core.ids_include(big, 70001))
    assert.matches("array of event ids expected", select(2, pcall(core.ids_include, "\x81", 1)))
    assert.matches("damaged array of event ids", select(2, pcall(core.ids_include, "\x92\x01", 2)))
    assert.matches("damaged array of event ids", select(2, pcall(core.ids_include, "\x91\xa5ab", "ab")))
  end)
end)

describe("a completed flow in a router", function()
  local temp = files.temps_each_test()

  local function open(path)
    return assert(procman.router { workflows = { counter }, journal = path, sync = "none" })
  end

  -- Flows that complete having handled: no id, a few (noted in their
  -- history), many (a seen table).
  local function fill(r)
    r:handle { event_type = "step", c = "none" }
    r:handle { event_type = "stop", c = "none" }
    r:handle { event_type = "step", c = "few", event_id = "f1" }
    r:handle { event_type = "step", c = "few", event_id = 2 }
    r:handle { event_type = "stop", c = "few", event_id = "f3" }
    for i, id in ipairs(IDS) do r:handle { event_type = "step", c = "many", event_id = id, pad = i % 2 == 0 } end
    r:handle { event_type = "stop", c = "many", event_id = "m-stop" }
  end

  local function ids_of(r)
    local out = {}
    for _, name in ipairs { "none", "few", "many" } do
      local final = assert(r.finished.counter[name], name)
      out[name] = fold.completed_ids(final)
    end
    return out
  end

  local function check_redeliveries(r)
    for _, e in ipairs {
      { c = "few", event_id = "f1" }, { c = "few", event_id = 2 }, { c = "few", event_id = "f3" },
      { c = "many", event_id = "\xff\0" }, { c = "many", event_id = math.mininteger },
      { c = "many", event_id = "m-stop" },
    } do
      assert.same({}, r:handle { event_type = "step", c = e.c, event_id = e.event_id })
    end
    for _, e in ipairs { { c = "few", event_id = "2" }, { c = "few", event_id = "f4" }, { c = "none", event_id = "n" },
                         { c = "many" } } do
      local ok, err = pcall(r.handle, r, { event_type = "step", c = e.c, event_id = e.event_id })
      assert.is_false(ok)
      assert.matches("is complete %(stopped%)", err)
    end
  end

  it("keeps the same bytes through the engine and the Lua path, and finds redeliveries", function()
    local re, rl = open(temp()), open(temp())
    rl.engine = false
    fill(re)
    fill(rl)
    assert.same(rl.finished, re.finished)
    assert.same({ none = {}, few = { "f1", 2, "f3" } }, { none = ids_of(re).none, few = ids_of(re).few })
    local many = ids_of(re).many
    assert.equal(#IDS + 1, #many)
    check_redeliveries(re)
    check_redeliveries(rl)
  end)

  it("is one string a flow (status, then the ids' bytes), the same from the engine, the Lua path, "
     .. "the scan in C and the Lua fold", function()
    local path = temp()
    local re, rl = open(path), open(temp())
    rl.engine = false
    fill(re)
    fill(rl)
    re:close()
    local scanned = open(path)
    scanned:close()  -- (its tables stay readable)
    fold_scan.enabled = false
    local ok, lua_fold = pcall(open, path)
    fold_scan.enabled = true
    assert(ok, lua_fold)
    lua_fold:close()
    for _, r in ipairs { re, rl, scanned, lua_fold } do
      for _, name in ipairs { "none", "few", "many" } do
        local final = r.finished.counter[name]
        assert.equal("string", type(final))  -- no table: one object a completed flow
        assert.equal("stopped", fold.final_status(final))
        assert.equal(final, fold.final("stopped", fold.final_ids(final)))
      end
      assert.is_nil(fold.final_ids(r.finished.counter.none))
      assert.equal(core.encode { "f1", 2, "f3" }, fold.final_ids(r.finished.counter.few))
    end
    -- a status that is not a string (a journal's record may lack one) keeps a table
    assert.same({ ids = "\x91\x01" }, fold.final(nil, "\x91\x01"))
    assert.is_nil(fold.final_status(fold.final(nil)))
  end)

  it("finds redeliveries after recovery, by the scan in C and by the Lua fold", function()
    local path = temp()
    local r = open(path)
    fill(r)
    local want = r.finished
    r:close()
    for _, scan in ipairs { true, false } do
      fold_scan.enabled = scan
      local again = open(path)
      fold_scan.enabled = true
      local sets = {}
      for name, ids in pairs(ids_of(again)) do
        sets[name] = {}
        for _, id in ipairs(ids) do sets[name][id] = true end
      end
      local wanted = {}
      for name, final in pairs(want.counter) do
        wanted[name] = {}
        for _, id in ipairs(fold.completed_ids(final)) do wanted[name][id] = true end
      end
      assert.same(wanted, sets)
      check_redeliveries(again)
      again:close()
    end
  end)

  it("lets the ids go at compaction: a redelivery is then a late event", function()
    local path = temp()
    local r = open(path)
    fill(r)
    assert(r:compact())
    assert.is_nil(fold.final_ids(r.finished.counter.few))
    assert.same({}, fold.completed_ids(r.finished.counter.few))
    assert.matches("is complete %(stopped%)",
                   select(2, pcall(r.handle, r, { event_type = "step", c = "few", event_id = "f1" })))
    r:close()
    local again = open(path)
    assert.equal("stopped", again:completed("counter", "few"))
    assert.is_nil(fold.final_ids(again.finished.counter.few))
    again:close()
  end)
end)
