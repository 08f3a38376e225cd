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
