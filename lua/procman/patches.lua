--- procman.patches: changes of workflow code inside one version, as
-- Temporal's patched/deprecatePatch.
--
--   if procman.patched("send-welcome") then
--     commands[#commands + 1] = { command_type = "send_welcome", user = event.user_id }
--   end
--
-- procman.patched(id) is true when the flow runs the code live (and the
-- router journals, with the event, that the flow took the change), and
-- when a journal is replayed from the event that recorded it; false when
-- history from before that event is replayed. So a flow that started on
-- the old code replays its past as it was and takes the new path for its
-- new events (docs/operations.md).
--
-- The router tells this module which flow runs (M.context, set around
-- each call into a flow). A flow remembers the changes it took; when it
-- takes one, the router restarts its history from a snapshot of that
-- moment (M.rebase), so every event a flow may replay internally (pm.c
-- rebuilds a state from its history after a failed handler) ran with the
-- changes it has: those replays answer from what the flow took.
local core = require "procman.core"

local M = {}

-- The changes each flow took: procman.pm -> { id = true }. Weak: only
-- flows that took one are here, and they leave with their pm.
local taken_by = setmetatable({}, { __mode = "k" })

--- The flow the router is running: { pm, replaying = true when the
-- journal is replayed, journaled = { id = true } (the changes the event
-- being replayed recorded), recorded = { id, ... } (the changes taken
-- live by the event being handled) }; false outside a router. Never nil:
-- the key stays in this table, so setting it allocates nothing (a router
-- sets it while memory may be running out, and must be able to undo).
M.context = false

-- The contexts the router uses, made once (so that setting one allocates
-- nothing, also when memory has run out): a live call, a journaled event
-- replayed, an undo (pm.c replays the flow's history).
M.LIVE = { pm = false, replaying = false, journaled = false, recorded = false }
M.REPLAY = { pm = false, replaying = true, journaled = false, recorded = false }
M.UNDO = { pm = false, replaying = true, journaled = false, recorded = false }

local function check_id(id, who)
  if type(id) ~= "string" or id == "" then
    error(string.format("procman.%s: the change id must be a non-empty string, got %s", who,
                        type(id)), 3)
  end
end

-- pm:handle runs the handler of the event being handled; pm.c's replay (a
-- state rebuilt from the flow's history) runs handlers from another C
-- function. The first C function on the stack that is not Lua's own
-- (pcall, string.gsub, ...) tells them apart.
local TRANSPARENT = {}
for _, lib in ipairs { _G, string, table } do
  for _, f in pairs(lib) do
    if type(f) == "function" then TRANSPARENT[f] = true end
  end
end
for _, name in ipairs { "pattern_find", "pattern_match", "pattern_gmatch", "pattern_gsub" } do
  TRANSPARENT[core[name]] = true  -- the sandbox's string functions
end

local function rebuilding(pm)
  local handle = getmetatable(pm).__index.handle
  for level = 3, 200 do
    local info = debug.getinfo(level, "fS")
    if info == nil then return false end
    if info.what == "C" and not TRANSPARENT[info.func] and not core.is_guard(info.func) then
      -- (the budget's guard around each function is transparent too)
      return info.func ~= handle and info.func ~= core.handle_fresh
    end
  end
  return false
end

local function record(ctx, id)
  local list = ctx.recorded
  if not list then
    list = {}
    ctx.recorded = list
  end
  for _, known in ipairs(list) do
    if known == id then return end
  end
  list[#list + 1] = id
end

--- procman.patched(id) -> boolean (see above).
function M.patched(id)
  check_id(id, "patched")
  local ctx = M.context
  if not ctx then return true end  -- no router: nothing to replay, the new code runs
  local taken = taken_by[ctx.pm]
  if taken and taken[id] then return true end
  if rebuilding(ctx.pm) then return false end
  if ctx.replaying then return ctx.journaled and ctx.journaled[id] == true end
  record(ctx, id)
  return true
end

--- procman.deprecate_patch(id): the old branch of change 'id' is gone from
-- the code; the new one runs always. Live, it still records the change,
-- so a journal stays true to what ran. Use it once no live flow lacks the
-- change (procman inspect --patches), then remove it in a later deploy.
function M.deprecate_patch(id)
  check_id(id, "deprecate_patch")
  local ctx = M.context
  if not ctx or ctx.replaying then return end
  local taken = taken_by[ctx.pm]
  if (taken and taken[id]) or rebuilding(ctx.pm) then return end
  record(ctx, id)
end

--- replay(pm, event, journaled[, handle]) -> the results of pcall(handle,
-- pm, event) (default pm.handle; core.handle_fresh for an event decoded
-- for this flow alone), procman.patched() answering as the journal
-- recorded: true for the changes the flow took before and for 'journaled'
-- (the ids the event's entry lists, or nil), false for others.
function M.replay(pm, event, journaled, handle)
  local ctx = M.REPLAY
  ctx.pm, ctx.journaled = pm, false
  if journaled then
    ctx.journaled = {}
    for _, id in ipairs(journaled) do ctx.journaled[id] = true end
  end
  M.context = ctx
  local ok, result = pcall(handle or pm.handle, pm, event)
  M.context = false
  return ok, result
end

--- taken(pm) -> the ids of the changes the flow took (an array, sorted), or nil.
function M.taken(pm)
  local taken = taken_by[pm]
  if taken == nil then return nil end
  local list = {}
  for id in pairs(taken) do list[#list + 1] = id end
  table.sort(list)
  return list
end

--- take(pm, ids): the flow took these changes (from a journal record).
function M.take(pm, ids)
  if ids == nil or #ids == 0 then return end
  local taken = taken_by[pm] or {}
  for _, id in ipairs(ids) do taken[id] = true end
  taken_by[pm] = taken
end

--- rebase(pm, ids): the flow took the changes 'ids' (besides those it
-- had); its history restarts from a snapshot of now (core.trim), so that
-- no event it may replay internally predates them. The router calls it
-- once the event that took them is journaled. (A state that is not data
-- cannot be snapshotted: its history stays, and a rebuild after a failed
-- handler would replay its older events with the changes taken.)
function M.rebase(pm, ids)
  core.trim(pm)
  M.take(pm, ids)
end

return M
