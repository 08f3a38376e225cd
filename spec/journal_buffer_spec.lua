-- The journal's write buffer: sync "none" and "batch" gather records and
-- write them in chunks of up to 64 KB (at sync/flush, close, collection,
-- when a record does not fit, and before a command leaves a router);
-- "always" writes and syncs each record. What each level promises after a
-- crash of the process: docs/durable.md.
local procman = require "procman"
local core = require "procman.core"
local batch = require "procman.workflows.batch"

local files = require "spec.support.files"

local CHUNK = 64 * 1024

-- What a reader that takes no lock (procman inspect, verify) sees of the
-- file: the payloads of its intact records, and the torn bytes after them.
local function on_disk(path)
  local next_record, info = assert(core.journal_scan(path))
  local payloads = {}
  for _, _, payload in next_record do payloads[#payloads + 1] = payload end
  return payloads, info.dropped
end

local function file_size(path)
  return #files.bytes(path)
end

-- Count the file operations 'fn' makes (the fault gate, never firing).
local function file_operations(fn)
  core.journal_faults(1e9, "EIO")
  local ok, err = pcall(fn)
  local calls = core.journal_faults()
  assert(ok, err)
  return calls
end

describe("the journal's write buffer", function()
  local path
  files.journal_each_test(function(p) path = p end)
  after_each(function() core.journal_faults() end)

  it("with sync none, writes records in chunks of up to 64 KB, each a run of whole records", function()
    local j = assert(core.journal_open(path, { sync = "none" }))
    local payload = string.rep("p", 100)  -- 109 bytes a record
    local calls = file_operations(function()
      for i = 1, 2000 do
        assert.equal(16 + (i - 1) * 109, j:append(1, payload))
        local size = file_size(path)
        assert.equal(0, (size - 16) % 109)  -- whole records only
        assert.is_true(j:size() - size < CHUNK)
      end
    end)
    assert.is_true(calls <= 4, calls .. " file operations for 2000 records")
    assert.equal(16 + 2000 * 109, j:size())
    assert.is_true(j:close())
    local payloads, dropped = on_disk(path)
    assert.equal(2000, #payloads)
    assert.equal(0, dropped)
  end)

  it("with sync none, leaves records in the buffer until written, then a reader sees them", function()
    local j = assert(core.journal_open(path, { sync = "none" }))
    j:append(1, "one")
    j:append(2, "two")
    assert.equal(16, file_size(path))
    assert.same({}, on_disk(path))
    assert.is_true(j:write())
    assert.same({ "one", "two" }, on_disk(path))
    assert.equal(0, j:syncs())  -- write is not sync
    j:close()
  end)

  it("with sync batch, writes and syncs the buffer at sync()", function()
    local j = assert(core.journal_open(path, { sync = "batch" }))
    for i = 1, 10 do j:append(1, "r" .. i) end
    assert.same({}, on_disk(path))
    assert.is_true(j:sync())
    assert.equal(10, #on_disk(path))
    assert.equal(1, (j:syncs()))
    assert.is_true(j:sync())  -- nothing new: no fdatasync
    assert.equal(1, (j:syncs()))
    j:close()
  end)

  it("with sync always, writes and syncs each record before the append returns", function()
    local j = assert(core.journal_open(path, { sync = "always" }))
    for i = 1, 3 do
      j:append(1, "r" .. i)
      assert.equal(i, #on_disk(path))
      assert.equal(i, (j:syncs()))
    end
    j:close()
  end)

  it("writes a record larger than the buffer at once, after what the buffer holds", function()
    local j = assert(core.journal_open(path, { sync = "none" }))
    local big = string.rep("b", 100 * 1024)
    j:append(1, "small")
    j:append(1, big)
    assert.same({ "small", big }, on_disk(path))
    j:append(1, "after")
    j:close()
    assert.same({ "small", big, "after" }, on_disk(path))
  end)

  it("writes the buffer when the journal is closed or collected", function()
    for _, sync in ipairs { "none", "batch" } do
      os.remove(path)
      local j = assert(core.journal_open(path, { sync = sync }))
      j:append(1, "closed")
      j:close()
      assert.same({ "closed" }, on_disk(path))
      j = assert(core.journal_open(path, { sync = sync }))
      j:append(1, "collected")
      j = nil  -- luacheck: ignore 311 (dropped on purpose)
      collectgarbage()
      collectgarbage()
      assert.same({ "closed", "collected" }, on_disk(path))
    end
  end)

  it("reads its own buffered records (j:records writes the buffer first)", function()
    local j = assert(core.journal_open(path, { sync = "none" }))
    j:append(1, "a")
    j:append(2, "b")
    local seen = {}
    for _, _, payload in j:records() do seen[#seen + 1] = payload end
    assert.same({ "a", "b" }, seen)
    j:close()
  end)

  for _, short in ipairs { false, true } do
    it("loses the buffer when writing it fails" .. (short and " after a short write" or "")
       .. ", keeps the file whole and refuses every later append", function()
      local j = assert(core.journal_open(path, { sync = "none" }))
      for i = 1, 5 do j:append(1, "kept" .. i) end
      assert(j:write())
      for i = 1, 5 do j:append(1, "lost" .. i) end
      core.journal_faults(1, "ENOSPC", short)
      local ok, err = j:write()
      core.journal_faults()
      assert.is_nil(ok)
      assert.matches("cannot write the journal's buffered records, which are lost.*No space left", err)
      local payloads, dropped = on_disk(path)
      assert.same({ "kept1", "kept2", "kept3", "kept4", "kept5" }, payloads)
      assert.equal(0, dropped)  -- cut back to the last whole record
      local at, why = j:append(1, "later")
      assert.is_nil(at)
      assert.matches("lost records it had accepted; reopen it", why)
      assert.is_nil((j:write()))
      assert.is_nil((j:sync()))
      j:close()
      assert.equal(5, #on_disk(path))
    end)
  end

  it("fails the append whose record does not fit when writing the full buffer fails", function()
    local j = assert(core.journal_open(path, { sync = "batch" }))
    local payload = string.rep("x", 1000)
    local appended = 0
    core.journal_faults(1, "EIO")
    while true do
      local at, err = j:append(1, payload)
      if not at then
        assert.matches("buffered records, which are lost.*Input/output error", err)
        break
      end
      appended = appended + 1
    end
    core.journal_faults()
    assert.equal(CHUNK // 1009, appended)  -- the buffer was full
    assert.same({}, on_disk(path))
    j:close()
  end)
end)

describe("a router with a buffered journal", function()
  local path
  files.journal_each_test(function(p) path = p end)
  after_each(function() core.journal_faults() end)

  local function open(sync)
    return assert(procman.router { workflows = { batch }, journal = path, sync = sync })
  end

  local function created(id)
    return { event_type = "batch_created", batch_id = id, event_id = "c" .. id, files = { "f" } }
  end

  -- Run 'code' in a child lua5.4 (this checkout's modules) that ends by
  -- killing itself with SIGKILL: the journal after a crash of the process.
  local function crash_after(code)
    local script = os.tmpname()
    files.write(script, string.format([[
package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local procman = require "procman"
local batch = require "procman.workflows.batch"
local path = %q
local function created(id)
  return { event_type = "batch_created", batch_id = id, event_id = "c" .. id, files = { "f" } }
end
%s
os.execute("kill -9 $PPID")
os.exit(3)  -- not reached
]], path, code))
    local ok, how, status = os.execute("exec lua5.4 " .. script)
    os.remove(script)
    assert.is_nil(ok)
    assert.same({ "signal", 9 }, { how, status })
  end

  it("writes the buffer before r:pending() lists a command", function()
    local r = open("none")
    r:handle(created("b1"))
    assert.same({}, on_disk(path))
    local pending = r:pending()
    assert.equal("batch/b1/1/1", pending[1].id)
    assert.equal(1, #on_disk(path))  -- what produced it is in the file
    r:close()
  end)

  it("writes the buffer before r:dispatch sends a command", function()
    local r = open("batch")
    r:handle(created("b1"))
    local seen
    assert.equal(1, r:dispatch(function() seen = #on_disk(path) end))
    assert.equal(1, seen)
    r:close()
  end)

  it("keeps a command that left before a SIGKILL: its record was written first", function()
    crash_after [[
local r = assert(procman.router { workflows = { batch }, journal = path, sync = "none" })
r:handle(created("b1"))
r:dispatch(function() os.execute("kill -9 $PPID") end)
]]
    local r = open("none")
    assert.equal("batch/b1/1/1", r:pending()[1].id)  -- sent, not acked: sent again
    assert.equal(0, r:stats().dropped)
    r:close()
  end)

  it("loses on a SIGKILL only what is still buffered, with sync none", function()
    crash_after [[
local r = assert(procman.router { workflows = { batch }, journal = path, sync = "none" })
r:handle(created("b1"))
r:pending()
r:handle(created("b2"))
r:handle(created("b3"))
]]
    local r = open("none")
    assert.is_not_nil(r:flow("batch", "b1"))
    assert.is_nil(r:flow("batch", "b2"))
    assert.is_nil(r:flow("batch", "b3"))
    assert.equal(0, r:stats().dropped)  -- whole records only
    r:close()
  end)

  it("keeps on a SIGKILL everything up to the last flush, with sync batch", function()
    crash_after [[
local r = assert(procman.router { workflows = { batch }, journal = path, sync = "batch" })
r:handle(created("b1"))
r:handle(created("b2"))
assert(r:flush())
r:handle(created("b3"))
]]
    local r = open("batch")
    assert.is_not_nil(r:flow("batch", "b2"))
    assert.is_nil(r:flow("batch", "b3"))
    r:close()
  end)

  it("refuses to list or send commands when the buffer cannot be written", function()
    local r = open("none")
    r:handle(created("b1"))
    core.journal_faults(1, "ENOSPC")
    local list, err = r:pending()
    core.journal_faults()
    assert.is_nil(list)
    assert.matches("^procman.router: cannot write the journal's buffered records, which are lost", err)
    local sent = 0
    local count, why = r:dispatch(function() sent = sent + 1 end)
    assert.equal(0, count)
    assert.equal(0, sent)
    assert.matches("lost records it had accepted; reopen it", why)
    local out, refused = r:handle(created("b2"))
    assert.is_nil(out)
    assert.matches("reopen it", refused)
    r:close()
    r = open("none")  -- no command left, and none is in the journal
    assert.same({}, r:pending())
    r:close()
  end)

  it("gives a reopen in the same process, after close or collection, every record", function()
    local r = open("none")
    r:handle(created("b1"))
    r:close()
    r = open("none")
    assert.is_not_nil(r:flow("batch", "b1"))
    r:handle(created("b2"))
    r = nil  -- luacheck: ignore 311 (dropped on purpose)
    collectgarbage()
    collectgarbage()
    r = open("none")
    assert.is_not_nil(r:flow("batch", "b2"))
    r:close()
  end)

  it("compacts buffered records into the new journal", function()
    local r = open("none")
    r:handle(created("b1"))
    assert(r:compact())
    local payloads = on_disk(path)  -- synced before the rename: a reader sees it
    assert.is_true(#payloads > 0)
    r:close()
    r = open("none")
    assert.equal("batch/b1/1/1", r:pending()[1].id)
    r:close()
  end)

  it("makes every record durable at r:flush(), with sync none too", function()
    local r = open("none")
    r:handle(created("b1"))
    assert(r:flush())
    assert.equal(1, #on_disk(path))
    r:close()
  end)
end)
