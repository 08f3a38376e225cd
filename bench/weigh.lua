--- weigh(n, make) -> the bytes the GC counts for what make() returns (and
-- keeps), per item of n: the measure of bytes per live flow, shared by
-- bench/router_case.lua and the specs that bound it.
return function(n, make)
  collectgarbage()
  collectgarbage()
  local before = collectgarbage("count")
  local keep = make()
  collectgarbage()
  collectgarbage()
  local bytes = (collectgarbage("count") - before) * 1024 / n
  assert(keep)
  return bytes
end
