--- Helpers for specs that work with journal files.
local files = {}

--- A path for a journal that does not exist yet.
function files.temp_path()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".pmj"
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
