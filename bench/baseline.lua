--- Plain-Lua baselines for the batch process manager: no procman, just
-- tables and functions, the way one would write it by hand.
--   seed:     the seed's algorithm, rescanning every file per event (O(n))
--   counters: the same rules with counters, O(1) per event
local baseline = {}

local function created(state, event)
  local commands = {}
  for i, f in ipairs(event.files) do
    state.files[f] = "pending"
    commands[i] = { command_type = "process_file", file = f }
  end
  return commands
end

-- The seed's determine_status: all success? any error? else pending.
local function determine_status(files)
  local all_success = true
  for _, s in pairs(files) do
    if s ~= "success" then all_success = false break end
  end
  if all_success then return "success" end
  for _, s in pairs(files) do
    if s == "error" then return "error" end
  end
  return "pending"
end

baseline.seed = {
  new = function(id) return { id = id, files = {}, status = "idle" } end,
  handle = function(state, event)
    if event.event_type == "batch_created" then
      local commands = created(state, event)
      state.status = "created"
      return commands
    elseif event.event_type == "file_processed" then
      state.files[event.file.id] = event.file.status
      state.status = determine_status(state.files)
      return {}
    end
    error("unknown event " .. tostring(event.event_type))
  end,
}

baseline.counters = {
  new = function(id) return { id = id, files = {}, status = "idle", pending = 0, failed = 0 } end,
  handle = function(state, event)
    if event.event_type == "batch_created" then
      local commands = created(state, event)
      state.pending = #commands
      state.status = #commands == 0 and "success" or "created"
      return commands
    elseif event.event_type == "file_processed" then
      local id, result = event.file.id, event.file.status
      local old = state.files[id]
      if old == nil then error("file not in batch: " .. tostring(id)) end
      if result ~= "success" and result ~= "error" then error("bad status") end
      if old == "pending" then state.pending = state.pending - 1 end
      if old == "error" then state.failed = state.failed - 1 end
      if result == "error" then state.failed = state.failed + 1 end
      state.files[id] = result
      state.status = state.failed > 0 and "error" or state.pending == 0 and "success" or "pending"
      return {}
    end
    error("unknown event " .. tostring(event.event_type))
  end,
}

return baseline
