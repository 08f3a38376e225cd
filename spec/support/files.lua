--- Helpers for specs that work with journal files.
local files = {}

--- A path for a journal that does not exist yet.
function files.temp_path()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".pmj"
end

--- In a describe block: before each of its tests, a fresh journal path
-- handed to set(path); after it, the journal and what compacting it may
-- leave (path .. ".compact") are removed.
function files.journal_each_test(set)
  local busted = require "busted"  -- its hooks are not globals of this module
  local path
  busted.before_each(function()
    path = files.temp_path()
    set(path)
  end)
  busted.after_each(function()
    os.remove(path)
    os.remove(path .. ".compact")
  end)
end

--- In a describe block: a function that gives a fresh journal path each
-- time it is called (for tests that need several); they are all removed
-- after each test.
function files.temps_each_test()
  local busted = require "busted"
  local paths = {}
  busted.after_each(function()
    for _, p in ipairs(paths) do os.remove(p) end
    paths = {}
  end)
  return function()
    paths[#paths + 1] = files.temp_path()
    return paths[#paths]
  end
end

--- The bytes of a file.
function files.bytes(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- Replace a file's bytes.
function files.write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

return files
