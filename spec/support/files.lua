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
