-- spec/support/files.lua's journal_each_test: a fresh path per test, and
-- nothing left behind after it.
local files = require "spec.support.files"

describe("files.journal_each_test", function()
  local path, first
  files.journal_each_test(function(p) path = p end)

  it("hands each test a path where no file is yet", function()
    assert.is_nil(io.open(path))
    files.write(path, "journal")
    files.write(path .. ".compact", "compaction's temporary file")
    first = path
  end)

  it("removed the last test's journal and its .compact, and hands a new path", function()
    assert.not_equal(first, path)
    assert.is_nil(io.open(first))
    assert.is_nil(io.open(first .. ".compact"))
  end)
end)

describe("files.temps_each_test", function()
  local temp = files.temps_each_test()
  local made

  it("hands a new path at each call, where no file is yet", function()
    local a, b = temp(), temp()
    assert.not_equal(a, b)
    assert.is_nil(io.open(a))
    files.write(a, "one")
    files.write(b, "two")
    made = { a, b }
  end)

  it("removed every path the last test made", function()
    for _, p in ipairs(made) do assert.is_nil(io.open(p)) end
  end)
end)
