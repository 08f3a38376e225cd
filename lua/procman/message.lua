--- procman.message: the text of an error value, whatever was raised.
--
-- Handlers may raise error objects (tables, userdata). Where procman must
-- turn one into text (a parked flow's error, a dead letter, a test's
-- outcome), it asks the value's __tostring, guarded: an object whose
-- __tostring fails, or returns something else than a string, must not
-- replace the report of the handler's failure with an error of its own.
-- The __tostring is workflow code: it runs under a budget of its own
-- (TOSTRING_BUDGET instructions, TOSTRING_MEMORY bytes), so one that loops
-- fails like one that raises.
local core = require "procman.core"

local TOSTRING_BUDGET = 10000000
local TOSTRING_MEMORY = 16 * 1024 * 1024

local guarded_tostring = core.guard(tostring, TOSTRING_BUDGET, TOSTRING_MEMORY,
                                    core.guard_flags.sandbox, "__tostring")

return function(err)
  local kind = type(err)
  if kind == "string" then return err end
  if kind == "number" then return tostring(err) end
  local ok, text = pcall(guarded_tostring, err)
  if ok then return text end
  return string.format("(an error object, a %s, whose __tostring failed: %s)", kind,
                       type(text) == "string" and text or type(text))
end
