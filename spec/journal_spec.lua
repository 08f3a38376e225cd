-- procman.core.journal_open: the journal file, from Lua.
local core = require "procman.core"

local files = require "spec.support.files"
local temp_path, file_bytes, write_bytes = files.temp_path, files.bytes, files.write

local function records(j)
  local out = {}
  for offset, type, payload in j:records() do out[#out + 1] = { offset, type, payload } end
  return out
end

describe("the journal", function()
  local path
  before_each(function() path = temp_path() end)
  after_each(function() os.remove(path) end)

  it("appends records and reads them back, also after reopening", function()
    local j, info = core.journal_open(path)
    assert.same({ records = 0, bytes = 16, dropped = 0 }, info)
    assert.equal(16, j:append(1, "one"))
    assert.equal(28, j:append(200, ""))
    assert.equal(37, j:append(3, string.rep("\0\255", 5000)))
    assert.same({ { 16, 1, "one" }, { 28, 200, "" }, { 37, 3, string.rep("\0\255", 5000) } }, records(j))
    assert.is_true(j:sync())
    assert.equal(37 + 9 + 10000, j:size())
    assert.matches("^procman.journal %(10046 bytes%)$", tostring(j))
    assert.is_true(j:close())
    local again, info2 = core.journal_open(path, { sync = "none" })
    assert.same({ records = 3, bytes = 10046, dropped = 0 }, info2)
    assert.equal(3, #records(again))
    again:close()
  end)

  it("creates the file readable by its owner only", function()
    local j = core.journal_open(path)
    j:close()
    local p = io.popen("stat -c %a " .. path)
    assert.equal("600", p:read("l"))
    p:close()
  end)

  it("cuts a torn tail at every byte offset of the last records", function()
    local j = core.journal_open(path)
    local ends = {}
    for i = 1, 4 do
      j:append(i, string.rep(tostring(i), i * 3))
      ends[i] = j:size()
    end
    j:close()
    local whole = file_bytes(path)
    for cut = ends[2], #whole do
      write_bytes(path, whole:sub(1, cut))
      local k, info = core.journal_open(path)
      local kept = 0
      for i = 1, 4 do if ends[i] <= cut then kept = i end end
      assert.equal(kept, info.records)
      assert.equal(cut - ends[kept], info.dropped)
      assert.equal(ends[kept], k:size())
      assert.equal(kept, #records(k))
      k:close()
      assert.equal(ends[kept], #file_bytes(path))  -- cut on disk too
    end
  end)

  it("reports a flipped bit in the middle with its offset, and repairs on request", function()
    local j = core.journal_open(path)
    for i = 1, 3 do j:append(i, "record " .. i) end
    j:close()
    local bytes = file_bytes(path)
    local flipped = bytes:sub(1, 30) .. string.char(bytes:byte(31) ~ 4) .. bytes:sub(32)
    write_bytes(path, flipped)
    local none, err, code = core.journal_open(path)
    assert.is_nil(none)
    assert.equal(path .. ": damaged record at byte 16: a record whose checksum does not match "
                 .. "(intact records follow at byte 33; open with repair = true to skip it)", err)
    assert.equal(84, code)  -- EILSEQ
    assert.equal(flipped, file_bytes(path))  -- nothing changed
    local k, info = core.journal_open(path, { repair = true })
    assert.equal(2, info.records)
    assert.equal(16, info.damaged_at)
    assert.same({ 2, 3 }, { records(k)[1][2], records(k)[2][2] })
    k:close()
  end)

  it("reports a last record written whole whose checksum fails as damage, not a torn tail", function()
    local j = core.journal_open(path)
    for i = 1, 3 do j:append(i, "record " .. i) end
    j:close()
    local bytes = file_bytes(path)
    local damaged = bytes:sub(1, -3) .. string.char(bytes:byte(-2) ~ 1) .. bytes:sub(-1)
    write_bytes(path, damaged)
    local none, err, code = core.journal_open(path)
    assert.is_nil(none)
    assert.equal(path .. ": damaged record at byte 50: a record whose checksum does not match "
                 .. "(the last record, written whole: damage, not a torn write; "
                 .. "open with repair = true to skip it)", err)
    assert.equal(84, code)
    assert.equal(damaged, file_bytes(path))  -- nothing cut
    local _, info = core.journal_scan(path)
    assert.same({ records = 2, bytes = #damaged, dropped = 0, damaged_at = 50, resume_at = #damaged }, info)
    local k, opened = core.journal_open(path, { repair = true })
    assert.same({ records = 2, bytes = #damaged, dropped = 0, damaged_at = 50 }, opened)
    k:append(4, "record 4")  -- after the damaged record, which stays as evidence
    assert.same({ 1, 2, 4 }, { records(k)[1][2], records(k)[2][2], records(k)[3][2] })
    k:close()
  end)

  describe("reads its records in windows, not the whole file at once", function()
    -- records of many sizes, some larger than the 1 MB window, some
    -- straddling its edges; what comes back is what went in, with offsets
    local function payload(i)
      local size = (i % 7 == 0) and (1 << 20) + i * 1000 or (i * 7919) % 40000
      return string.rep(string.char(i % 256), size)
    end

    local function write(n)
      local j = core.journal_open(path, { sync = "none" })
      local offsets = {}
      for i = 1, n do offsets[i] = j:append(1 + i % 200, payload(i)) end
      j:close()
      return offsets
    end

    local function check(j, offsets, skip)
      local i, seen = 0, 0
      for offset, kind, data in j:records() do
        i = i + 1
        while skip and skip[i] do i = i + 1 end
        assert.equal(offsets[i], offset)
        assert.equal(1 + i % 200, kind)
        assert.is_true(data == payload(i), "record " .. i)
        seen = seen + 1
      end
      return seen
    end

    it("gives back every record, those larger than the window too", function()
      local offsets = write(60)
      local j = core.journal_open(path)
      assert.equal(60, check(j, offsets))
      assert.is_true(j:size() > 5 * (1 << 20))
      j:close()
    end)

    it("skips a repaired range far from the start", function()
      local offsets = write(40)
      local bytes = file_bytes(path)
      local at = offsets[30] + 20  -- inside record 30's payload
      write_bytes(path, bytes:sub(1, at - 1) .. string.char(bytes:byte(at) ~ 1) .. bytes:sub(at + 1))
      local j, info = core.journal_open(path, { repair = true })
      assert.equal(offsets[30], info.damaged_at)
      assert.equal(39, check(j, offsets, { [30] = true }))
      j:close()
    end)

    it("takes no window larger than the journal for a damaged record's length", function()
      -- a flipped high bit makes record 1's length 512 MB: within the
      -- format's limit, far past the end of this 1.2 MB file (more than
      -- one window)
      local offsets = write(8)
      local bytes = file_bytes(path)
      local at = offsets[1] + 4  -- the length's high byte (little endian)
      write_bytes(path, bytes:sub(1, at - 1) .. string.char(bytes:byte(at) ~ 0x20) .. bytes:sub(at + 1))
      local j, info = core.journal_open(path, { repair = true })
      assert.equal(offsets[1], info.damaged_at)
      collectgarbage()
      local before_kb, most_kb = collectgarbage("count"), 0
      for _ in j:records() do most_kb = math.max(most_kb, collectgarbage("count") - before_kb) end
      -- windows, the rest read to look past the damage, and the payloads
      -- given out: a few times the file, never the 512 MB
      assert.is_true(most_kb < 8 * #bytes / 1024, string.format("the reader took %.0f kB", most_kb))
      j:close()
    end)

    it("raises when the journal is closed while its records are read", function()
      write(20)
      local j = core.journal_open(path)
      local next_record = j:records()
      next_record()
      j:close()
      assert.has_error(function() for _ = 1, 20 do next_record() end end,
                       "procman.journal: the journal was closed while its records were read")
    end)
  end)

  it("refuses what is not a journal and leaves it alone", function()
    write_bytes(path, "my notes")
    local j, err = core.journal_open(path)
    assert.is_nil(j)
    assert.equal(path .. ": not a procman journal (bad magic)", err)
    assert.equal("my notes", file_bytes(path))
  end)

  it("is locked against a second opener", function()
    local j = core.journal_open(path)
    local k, err = core.journal_open(path)
    assert.is_nil(k)
    assert.matches("the journal is in use by another router of this process", err)
    j:close()
    k = assert(core.journal_open(path))
    k:close()
  end)

  it("says why it cannot open, the Lua way", function()
    local j, err, code = core.journal_open("/nonexistent-dir/x.pmj")
    assert.is_nil(j)
    assert.equal("/nonexistent-dir/x.pmj: cannot open the journal (No such file or directory)", err)
    assert.equal(2, code)
  end)

  it("checks its arguments", function()
    assert.has_error(function() core.journal_open() end)
    assert.has_error(function() core.journal_open(path, { sync = "sometimes" }) end,
                     'procman.journal: sync must be "always", "batch" or "none", got sometimes')
    local j = core.journal_open(path)
    assert.has_error(function() j:append(0, "x") end)
    assert.has_error(function() j:append(256, "x") end)
    assert.has_error(function() j:append(1, {}) end)
    j:close()
    assert.has_error(function() j:append(1, "x") end, "procman.journal: the journal is closed")
    assert.has_error(function() j:records() end, "procman.journal: the journal is closed")
    assert.is_true(j:close())
    assert.equal("procman.journal (closed)", tostring(j))
  end)

  it("closes by <close> and by the garbage collector", function()
    do
      local j <close> = core.journal_open(path)
      j:append(1, "x")
    end
    do  -- the lock was released; this one is left to the garbage collector
      local k = assert(core.journal_open(path))
      assert.equal(16 + 9 + 1, k:size())
    end
    collectgarbage()
    collectgarbage()
    assert(core.journal_open(path)):close()
  end)
end)
