--- Run Lua code in a child process (lua5.4, this process's module paths),
-- for code that might hang or take the process down: the child is killed
-- after a guard timeout, which only detects a hang (it is no speed limit).
local M = {}

M.GUARD_SECONDS = tonumber(os.getenv("PROCMAN_GUARD_SECONDS")) or 60

--- run(code) -> what the child printed (stdout and stderr), with
-- "(killed: hung)" appended when the guard timeout had to stop it.
function M.run(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n", package.path, package.cpath), code)
  f:close()
  local p = assert(io.popen(string.format("timeout %d lua5.4 %s 2>&1; echo \"exit: $?\"",
                                          M.GUARD_SECONDS, path)))
  local out = p:read("a")
  p:close()
  os.remove(path)
  if out:find("exit: 124\n", 1, true) then out = out .. "(killed: hung)\n" end
  return out
end

return M
