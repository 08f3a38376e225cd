-- Security basics: journal files are private, compaction cannot be steered
-- through a planted file or symlink, bytes from outside are bounded.
local procman = require "procman"
local batch = require "procman.workflows.batch"
local files = require "spec.support.files"

local function mode_of(path)
  local p = assert(io.popen("stat -c %a " .. path))
  local mode = p:read("l")
  p:close()
  return mode
end

describe("security", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("creates journals readable and writable by their owner only", function()
    local r = assert(procman.router { workflows = { batch }, journal = path })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    assert.equal("600", mode_of(path))
    assert.truthy(r:compact())
    assert.equal("600", mode_of(path))  -- the compacted file too
    r:close()
  end)

  it("does not follow a symlink planted where compaction writes its temporary file", function()
    local victim = os.tmpname()
    files.write(victim, "precious")
    os.execute(string.format("ln -s %s %s.compact", victim, path))
    local r = assert(procman.router { workflows = { batch }, journal = path })
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    assert.truthy(r:compact())
    r:close()
    assert.equal("precious", files.bytes(victim))
    os.remove(victim)
    r = assert(procman.router { workflows = { batch }, journal = path })
    assert.equal(1, r:flow("batch", "b1"):version())
    r:close()
  end)

  it("refuses to use what is not a regular file as a journal", function()
    local r, err = procman.router { workflows = { batch }, journal = "/dev/null" }
    assert.is_nil(r)
    assert.matches("procman.router: /dev/null: the journal is not a regular file", err)
  end)

  it("bounds what the decoder allocates by the input: a length beyond the input is refused", function()
    -- array 32 claiming 2^31 - 1 elements in 5 bytes, str 32 claiming 4 GiB
    assert.error_matches(function() procman.decode("\xdd\x7f\xff\xff\xff") end, "procman.decode: ")
    assert.error_matches(function() procman.decode("\xdb\xff\xff\xff\xff") end, "procman.decode: ")
    assert.error_matches(function() procman.decode(string.rep("\x91", 200) .. "\xc0") end, "nested more than 100 deep")
  end)
end)
