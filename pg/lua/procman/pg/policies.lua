--- procman.pg.policies: a worker's policies for an event that no flow
-- takes, with the router's option names and outcomes (on_unknown, on_late,
-- on_unroutable: the router of each unit applies them), and the router's
-- hooks (procman.hooks), which the worker calls once the unit that did
-- what they report has committed.
--
-- A worker has no caller to raise to: "raise" would stop its partitions
-- on one event, so it is refused; the worker's defaults are the router's
-- non-raising choices (on_unknown = "ignore", on_late = "dead_letter",
-- on_unroutable = "dead_letter").
local hooks = require "procman.hooks"
local message = require "procman.message"

local M = {}

local CHOICES = {
  on_unknown = { default = "ignore", ignore = true, dead_letter = true },
  on_late = { default = "dead_letter", ignore = true, dead_letter = true },
  on_unroutable = { default = "dead_letter", dead_letter = true },
}

-- Hooks about the journal: a worker has none.
local NO_JOURNAL = { journal_append = true, journal_fsync = true }

local function fail(fmt, ...)
  error("procman.pg.worker: " .. string.format(fmt, ...), 4)
end

local function choice(opts, key)
  local v, ok = opts[key], CHOICES[key]
  if v == nil then return ok.default end
  if v == "raise" then
    fail('%s = "raise" is the router\'s: a worker has no caller to raise to (it would stop its partitions '
         .. 'on one event); use "dead_letter"%s', key, ok.ignore and ' or "ignore"' or "")
  end
  if ok[v] ~= true then
    fail('%s must be %s, got %s', key, ok.ignore and '"ignore" or "dead_letter"' or '"dead_letter"',
         tostring(v))
  end
  return v
end

--- check(opts) -> { on_unknown, on_late, on_unroutable, hooks (a copy, or nil) }
function M.check(opts)
  local out = {}
  for key in pairs(CHOICES) do out[key] = choice(opts, key) end
  if opts.hooks ~= nil then
    local ok, given = pcall(hooks.check_all, opts.hooks, "procman.pg.worker")
    if not ok then error(given, 3) end
    for name in pairs(given) do
      if NO_JOURNAL[name] then fail("hook %s does not apply to a worker (it has no journal)", name) end
    end
    out.hooks = next(given) and given or nil
  end
  return out
end

--- run(hooks, calls, report): call the queued hooks; one that raises is
-- reported and changes nothing (what it reports is committed already).
function M.run(given, calls, report)
  for _, call in ipairs(calls or {}) do
    local fn = given[call[1]]
    if fn then
      local ok, err = pcall(fn, table.unpack(call, 2, call.n))
      if not ok then report(string.format("hook %s failed: %s", call[1], message(err))) end
    end
  end
end

return M
