--- procman.workflows.batch: the seed's batch-of-files process manager.
--
-- A batch starts with batch_created, which lists its files; the manager
-- answers with one process_file command per file, then follows each
-- file_processed event. Status (the seed's determine_status):
--   "idle"     before batch_created
--   "created"  after batch_created, before any file_processed
--   "success"  every file succeeded (an empty batch is "success" at once)
--   "error"    at least one file failed
--   "pending"  otherwise
-- The seed rescans every file per event (O(n) per event, O(n^2) per
-- batch); here counters keep the status in O(1) per event. They are kept
-- in the state (state is only ever the fold of events) and hidden by view,
-- so pm:state() shows exactly the seed's keys: id, files, status.
--
-- Where the seed is silent, these are errors that leave the flow as it
-- was: a second batch_created, file_processed before batch_created, a file
-- not in the batch, a result other than "success"/"error", a file listed
-- twice. Reporting a file again replaces its earlier result (the seed's
-- Map.put), with the counters kept right.
-- Loads with require and in the sandbox (procman.load), where the global
-- 'procman' holds what a workflow needs and require is not available.
local procman = rawget(_ENV, "procman") or require "procman"

-- Check the file list of batch_created; returns its length.
local function check_files(files)
  if type(files) ~= "table" then
    error(string.format("files must be an array of file names, got %s",
                        type(files)), 0)
  end
  local n, seen = #files, {}
  for i = 1, n do
    local f = files[i]
    if type(f) ~= "string" or f == "" then
      error(string.format("files[%d] must be a non-empty string, got %s",
                          i, type(f) == "string" and "an empty string" or type(f)), 0)
    end
    if seen[f] then
      error(string.format("file %q is listed twice (files[%d] and files[%d])",
                          f, seen[f], i), 0)
    end
    seen[f] = i
  end
  for k in next, files do
    if seen[files[k]] ~= k then
      error(string.format("files must be an array, but has the key %s",
                          tostring(k)), 0)
    end
  end
  return n
end

local function batch_created(state, event)
  if state.status ~= "idle" then
    error("the batch was already created", 0)
  end
  local files = event.files
  local n = check_files(files)
  local commands = {}
  for i = 1, n do
    state.files[files[i]] = "pending"
    commands[i] = { command_type = "process_file", file = files[i] }
  end
  state.pending = n
  state.status = n == 0 and "success" or "created"
  return commands
end

-- Checks come before any change, so a refused event costs no replay; the
-- common path makes no function calls.
local function file_processed(state, event)
  if state.status == "idle" then
    error("the batch has not been created yet", 0)
  end
  local file = event.file
  local id = type(file) == "table" and file.id
  local old = state.files[id]
  if old == nil then
    if type(id) ~= "string" then
      error("file must be a table { id = <file name>, status = ... }", 0)
    end
    error(string.format("file %q is not in this batch", id), 0)
  end
  local result = file.status
  if result ~= "success" and result ~= "error" then
    error(string.format("file %q has status %s; expected \"success\" or \"error\"", id,
                        type(result) == "string" and string.format("%q", result) or tostring(result)), 0)
  end
  if old == "pending" then
    state.pending = state.pending - 1
  elseif old == "error" then
    state.failed = state.failed - 1
  end
  local failed = state.failed
  if result == "error" then
    failed = failed + 1
    state.failed = failed
  end
  state.files[id] = result
  -- the seed's determine_status, from the counters
  state.status = failed > 0 and "error" or state.pending == 0 and "success" or "pending"
end

return procman.workflow {
  name = "batch",
  correlate = "batch_id",
  starts = { "batch_created" },
  init = function(id)
    return { id = id, files = {}, status = "idle", pending = 0, failed = 0 }
  end,
  on = {
    batch_created = batch_created,
    file_processed = file_processed,
  },
  done = function(state)
    return state.status ~= "idle" and state.pending == 0
  end,
  view = function(state)
    return { id = state.id, files = state.files, status = state.status }
  end,
}
