--- Run bin/procman in a child lua5.4 with this checkout's paths:
-- procman_cmd(args, input[, env]) -> { out, err, code }, 'input' fed on
-- stdin, 'env' (e.g. "TERM=dumb") put before the command.
local files = require "spec.support.files"

return function(args, input, env)
  local inp, out, err = os.tmpname(), os.tmpname(), os.tmpname()
  files.write(inp, input or "")
  local cmd = string.format("%s LUA_PATH=%q LUA_CPATH=%q lua5.4 bin/procman %s < %s > %s 2> %s",
                            env or "", package.path, package.cpath, args, inp, out, err)
  local _, _, code = os.execute(cmd)
  local result = { out = files.bytes(out), err = files.bytes(err), code = code }
  os.remove(inp)
  os.remove(out)
  os.remove(err)
  return result
end
