-- I/O faults: every file operation of the journal fails in turn (ENOSPC,
-- EIO, a short write then ENOSPC), through core.journal_faults. The router
-- reports a clear error, its flows and outbox stay as they were, and
-- reopening the journal gives a router that holds every acknowledged
-- operation (and at most the one that failed).
local procman = require "procman"
local core = require "procman.core"
assert(core.journal_faults, "this procman.core has no fault injection: it is in the test build only "
       .. "(build/faults/procman/core.so, which make test builds and .busted puts first)")
local batch = require "procman.workflows.batch"

local files = require "spec.support.files"
local routers = require "spec.support.routers"

local function clock() return 1000 end

local function open(path, sync)
  return procman.router { workflows = { batch }, journal = path, clock = clock, sync = sync or "always" }
end

-- The operations of the scenario, in order: each returns true, or nil and
-- a message (or raises). The tick fires one timer (so it is atomic).
-- Compaction and flush change no state: the reference run, which has no
-- journal, leaves them out. Compaction comes early: it rewrites the
-- journal, which would hide what a failure had left in the file.
local STATELESS = { [2] = true, [7] = true }
-- The operations that write a buffered journal's records (compaction
-- rewrites them all; flush writes and syncs the buffer).
local WRITES = { [2] = true, [7] = true }
local OPS = {
  function(r) return r:handle { event_type = "batch_created", batch_id = "b2", files = { "x" },
                                file_timeout = 5 } end,
  function(r) return r:compact() end,
  function(r) return r:handle { event_type = "file_processed", batch_id = "b1", event_id = "p1",
                                file = { id = "a", status = "success" } } end,
  function(r) return r:ack("batch/b1/1/1") end,
  function(r) return r:tick(1005) end,
  function(r) return r:handle { event_type = "file_processed", batch_id = "b1",
                                file = { id = "b", status = "error" } } end,
  function(r) return r:flush() end,
}

-- A router in memory that did the operations listed (indexes into OPS,
-- in order), after the setup.
local function reference(list)
  local r = procman.router { workflows = { batch }, clock = clock }
  r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
  for _, i in ipairs(list) do
    if not STATELESS[i] then assert(OPS[i](r)) end
  end
  return routers.snapshot(r, true)
end

-- The journal the scenario starts from: b1 created.
local function setup(path)
  local r = assert(open(path))
  r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
  r:close()
end

-- Run the scenario with the k-th file operation failing, going on after a
-- failure (a full disk may have room again): returns the operations
-- acknowledged, the first one that failed and its message, the router and
-- the number of file operations made (fewer than k: none failed).
local function run_failing(path, k, errno, short, sync)
  local r = assert(open(path, sync))
  -- finalizers first: a journal left open by an earlier test, closed by
  -- the collector while faults are armed, would take the k-th fault
  collectgarbage()
  collectgarbage()
  core.journal_faults(k, errno, short)
  local acked, failed, message = {}, nil, nil
  for i, op in ipairs(OPS) do
    local ok, result, err = pcall(op, r)
    if ok and result ~= nil then
      acked[#acked + 1] = i
    elseif failed == nil then
      failed, message = i, ok and err or result
    end
    if tostring(r) == "procman.router (closed)" then break end
  end
  local calls = core.journal_faults()
  return acked, failed, message, r, calls
end

-- The acknowledged operations plus the one that failed, in order.
local function with(acked, failed)
  local list = { failed }
  for _, i in ipairs(acked) do list[#list + 1] = i end
  table.sort(list)
  return list
end

-- The longest prefix of 'list' whose reference run gives 'snapshot' (its
-- length), or nil.
local function prefix_giving(snapshot, list)
  for n = #list, 0, -1 do
    if routers.same(snapshot, reference(table.move(list, 1, n, 1, {}))) then return n end
  end
  return nil
end

describe("I/O faults", function()
  local path
  files.journal_each_test(function(p) path = p end)
  after_each(function() core.journal_faults() end)

  it("counts the file operations of the scenario", function()
    setup(path)
    local r = assert(open(path))
    core.journal_faults(1e9, "EIO")
    for _, op in ipairs(OPS) do assert(op(r)) end
    local calls = core.journal_faults()
    r:close()
    assert.is_true(calls > 20, "only " .. calls .. " file operations")
  end)

  for _, fault in ipairs { { "ENOSPC" }, { "EIO" }, { "ENOSPC", true } } do
    local errno, short = fault[1], fault[2]
    local name = errno .. (short and " after a short write" or "")
    it("keep every acknowledged operation when each file operation fails in turn: " .. name, function()
      local k, failures = 1, 0
      while true do
        os.remove(path)
        setup(path)
        local acked, failed, message, r = run_failing(path, k, errno, short)
        if failed == nil then r:close() break end
        failures = failures + 1
        assert.is_string(message)
        assert.matches("procman.router", message)
        -- the live router: exactly the acknowledged operations (unless it
        -- closed itself, past compaction's point of no return)
        if tostring(r) ~= "procman.router (closed)" then
          assert.same(reference(acked), routers.snapshot(r, true),
                      string.format("k=%d: the live router after '%s'", k, message))
        end
        r:close()
        -- reopened: every acknowledged operation, and at most the failed one
        local again = assert(open(path))
        local now = routers.snapshot(again, true)
        again:close()
        if not routers.same(now, reference(with(acked, failed))) then
          assert.same(reference(acked), now, string.format("k=%d: recovered after '%s'", k, message))
        end
        k = k + 1
      end
      assert.is_true(failures > 20, "only " .. failures .. " failures tried")
    end)
  end

  -- sync "batch" and "none" buffer records: a fault in writing the buffer
  -- loses the records it held (their operations were acknowledged), and the
  -- journal then refuses every append. Reopened, it holds a prefix of the
  -- operations: at least every one acknowledged before the last write that
  -- succeeded (compaction, flush), at most the one that failed.
  for _, sync in ipairs { "batch", "none" } do
    it("keep every operation written before a fault, losing only buffered ones: sync " .. sync, function()
      local k, failures, losses = 1, 0, 0
      repeat
        os.remove(path)
        setup(path)
        local acked, failed, message, r, calls = run_failing(path, k, "ENOSPC", true, sync)
        if failed == nil then  -- the fault missed, or hit a write no operation waits for
          r:close()
        else
          failures = failures + 1
          assert.matches("procman.router", message)
          -- (a compaction that fails to write its new file loses nothing)
          local lost = message:find("which are lost", 1, true) and not message:find("compaction failed")
          if lost then
            losses = losses + 1
            assert.is_nil(r:pending())  -- no command leaves once records are lost
          elseif tostring(r) ~= "procman.router (closed)" then
            assert.same(reference(acked), routers.snapshot(r, true),
                        string.format("k=%d: the live router after '%s'", k, message))
          end
          r:close()
        end
        local again = assert(open(path, sync))
        local now = routers.snapshot(again, true)
        again:close()
        local written = 0  -- acknowledged operations surely in the file
        for n, i in ipairs(acked) do
          if WRITES[i] then written = n end
        end
        local list = failed and with(acked, failed) or acked
        local n = prefix_giving(now, list)
        assert(n and n >= written, string.format("k=%d: recovered after '%s': %s operations of %s "
                                                 .. "(at least %d)", k, tostring(message), tostring(n),
                                                 table.concat(list, ","), written))
        k = k + 1
      until calls < k - 1
      assert.is_true(failures > 5, "only " .. failures .. " failures tried")
      assert.is_true(losses > 0, "no fault hit a write of the buffer")
    end)
  end

  it("leave no temporary file when a compaction fails at any file operation (a full disk)", function()
    local k = 1
    while true do
      os.remove(path)
      setup(path)
      local r = assert(open(path))
      local before = files.bytes(path)
      core.journal_faults(k, "ENOSPC", true)
      local called, ok, err = pcall(r.compact, r)
      core.journal_faults()
      if called and ok then r:close() break end
      assert.is_nil(io.open(path .. ".compact"), "k=" .. k .. ": a temporary file was left")
      if called then
        assert.matches("compaction failed, the journal is unchanged", err)
        assert.equal(before, files.bytes(path))
      else  -- past the rename: the router closed itself
        assert.matches("compacted, but", ok)
      end
      r:close()
      k = k + 1
    end
    assert.is_true(k > 3)
  end)

  it("open a journal that cannot be read with a clear error, changing nothing", function()
    setup(path)
    local before = files.bytes(path)
    local k = 1
    while true do
      core.journal_faults(k, "EIO")
      local ok, r, err = pcall(open, path)
      core.journal_faults()
      if ok and r then r:close() break end
      assert.matches("procman.router: ", ok and err or r)
      assert.equal(before, files.bytes(path))
      collectgarbage()  -- a half-opened journal lets its lock go
      k = k + 1
    end
    assert.is_true(k > 2)
  end)
end)
