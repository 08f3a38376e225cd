--- procman.workflows.batch: the seed's batch-of-files process manager,
-- with retries and timeouts (the seed's exercise: "send retry commands for
-- those files that have failed").
--
-- A batch starts with batch_created, which lists its files; the manager
-- answers with one process_file command per file, then follows each
-- file_processed event. Status (the seed's determine_status):
--   "idle"     before batch_created
--   "created"  after batch_created, before any file_processed
--   "success"  every file succeeded (an empty batch is "success" at once)
--   "error"    at least one file failed for good
--   "pending"  otherwise
-- The seed rescans every file per event (O(n) per event, O(n^2) per
-- batch); here counters keep the status in O(1) per event. They are kept
-- in the state (state is only ever the fold of events) and hidden by view,
-- so pm:state() shows exactly the seed's keys: id, files, status.
--
-- Retries and timeouts, both off by default (then every command and state
-- is exactly the seed's). batch_created may carry:
--   max_attempts  attempts per file (default 1: no retry). A file that
--                 fails with attempts left goes back to "pending" and the
--                 manager sends { command_type = "process_file", file = f,
--                 attempt = n } again; only a file out of attempts is
--                 "error" (and makes the batch "error").
--   file_timeout  seconds (default none). A file with no result that long
--                 after its command counts as failed: the manager asks
--                 for a file_timed_out stimulus (procman.after, keyed by
--                 the file) and cancels it when the result comes.
-- A file_processed may say which attempt it reports (file.attempt): a
-- failure of an earlier attempt than the one running is ignored, so a
-- late report cannot start a retry twice.
--
-- Where the seed is silent, these are errors that leave the flow as it
-- was: a second batch_created, file_processed before batch_created, a file
-- not in the batch, a result other than "success"/"error", a file listed
-- twice, max_attempts or file_timeout that are not positive numbers.
-- Reporting a finished file again replaces its earlier result (the seed's
-- Map.put), with the counters kept right.
-- Loads with require and in the sandbox (procman.load), where the global
-- 'procman' holds what a workflow needs and require is not available.
local procman = rawget(_ENV, "procman") or require "procman"

-- Check the file list of batch_created; returns its length. Raises the
-- first error in this order: a bad entry files[i] (by i), a file listed
-- twice (by its second place), a key other than 1..#files.
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

local type = type  -- an upvalue: no global lookup per file or event

-- The common case of batch_created, in one pass over the pairs of
-- 'files' (the hot path with a million files: no set of its own, no
-- second pass): each file goes into 'into' (state.files, empty) as
-- "pending" and, when 'commands' is given, its process_file command into
-- it. Returns #files, or nil when the list is not a clean array of
-- distinct non-empty strings whose pairs come in order 1, 2, ... (an
-- array's: its copy keeps them in the array part): check_files then
-- raises its error, or finds the list fine after all (a handler that
-- fails takes back what went into 'into'; 'commands' is then dropped).
-- The keys are checked by their place (k == i: no math.type call per
-- file), and the count makes them exactly 1..#files.
local function fill_pending(files, into, commands)
  if type(files) ~= "table" or next(into) ~= nil then return nil end
  local i = 0
  for k, f in next, files do
    i = i + 1
    if k ~= i or type(f) ~= "string" or f == "" or into[f] ~= nil then
      return nil
    end
    into[f] = "pending"
    if commands then commands[i] = { command_type = "process_file", file = f } end
  end
  return i == #files and i or nil
end

-- The retry options of batch_created: max_attempts, file_timeout (nil
-- when not given).
local function check_options(event)
  local max, timeout = event.max_attempts, event.file_timeout
  if max ~= nil and not (math.type(max) == "integer" and max >= 1) then
    error(string.format("max_attempts must be a positive integer, got %s", tostring(max)), 0)
  end
  if timeout ~= nil and not (type(timeout) == "number" and timeout > 0 and timeout < math.huge) then
    error(string.format("file_timeout must be a positive number of seconds, got %s",
                        tostring(timeout)), 0)
  end
  return max, timeout
end

local function timeout_key(file)
  return "timeout:" .. file
end

-- The commands that start attempt n of a file: process_file (with the
-- attempt number on retries) and, with a timeout, its stimulus.
local function start_attempt(state, file, n, commands)
  local command = { command_type = "process_file", file = file }
  if n > 1 then command.attempt = n end
  commands[#commands + 1] = command
  if state.file_timeout then
    commands[#commands + 1] = procman.after(state.file_timeout, {
      event_type = "file_timed_out", batch_id = state.id, file = file, attempt = n,
    }, timeout_key(file))
  end
end

local function batch_created(state, event)
  if state.status ~= "idle" then
    error("the batch was already created", 0)
  end
  local files = event.files
  -- the common case (no timeout) has its commands made in the same pass:
  -- start_attempt's, without a call per file
  local commands = event.file_timeout == nil and {} or nil
  local n = fill_pending(files, state.files, commands)
  if n == nil then  -- not the common case: the checks say why, or it is fine after all
    n = check_files(files)
    for i = 1, n do state.files[files[i]] = "pending" end
    commands = nil
  end
  local max_attempts, file_timeout = check_options(event)
  if max_attempts and max_attempts > 1 then
    state.max_attempts, state.attempts = max_attempts, {}
  end
  state.file_timeout = file_timeout
  if commands == nil then
    commands = {}
    for i = 1, n do
      if file_timeout then
        start_attempt(state, files[i], 1, commands)
      else
        commands[i] = { command_type = "process_file", file = files[i] }
      end
    end
  end
  state.pending = n
  state.status = n == 0 and "success" or "created"
  return commands
end

-- The seed's determine_status, from the counters.
local function update_status(state)
  state.status = state.failed > 0 and "error" or state.pending == 0 and "success" or "pending"
end

-- The attempt of a file now running (1 until a retry).
local function attempt_of(state, id)
  return state.attempts and state.attempts[id] or 1
end

-- A pending file failed: retry it if it has attempts left. Returns the
-- retry's commands, or nil when the file is out of attempts.
local function retry(state, id)
  local n = attempt_of(state, id)
  if n >= (state.max_attempts or 1) then return nil end
  state.attempts[id] = n + 1
  local commands = {}
  start_attempt(state, id, n + 1, commands)
  return commands
end

-- Record a file's result; the status follows (update_status's rule,
-- written out: this runs once per event).
local function settle_file(state, id, old, result)
  local pending, failed = state.pending, state.failed
  if old == "pending" then
    pending = pending - 1
  elseif old == "error" then
    failed = failed - 1
  end
  if result == "error" then failed = failed + 1 end
  state.pending, state.failed = pending, failed
  state.files[id] = result
  state.status = failed > 0 and "error" or pending == 0 and "success" or "pending"
end

-- Checks come before any change, so a refused event costs no replay; the
-- common path (no retries, no timeout) makes few function calls.
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
  local commands
  if old == "pending" then
    if result == "error" then
      local reported = file.attempt
      if reported ~= nil and math.type(reported) ~= "integer" then
        error(string.format("file %q: attempt must be an integer, got %s", id, tostring(reported)), 0)
      end
      if reported ~= nil and reported < attempt_of(state, id) then
        return nil  -- a late failure of an attempt already retried
      end
      commands = state.max_attempts and retry(state, id)
      if commands then
        update_status(state)
        return commands
      end
    end
    if state.file_timeout then commands = { procman.cancel(timeout_key(id)) } end
  end
  settle_file(state, id, old, result)
  return commands
end

-- A file's attempt got no result in time: a failure, unless the file has
-- moved on (a result came, or a later attempt runs).
local function file_timed_out(state, event)
  local id = event.file
  if state.files[id] == nil then
    error(string.format("file_timed_out: file %s is not in this batch", tostring(id)), 0)
  end
  if state.files[id] ~= "pending" or event.attempt ~= attempt_of(state, id) then
    return nil
  end
  local commands = state.max_attempts and retry(state, id)
  if commands then
    update_status(state)
    return commands
  end
  settle_file(state, id, "pending", "error")
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
    file_timed_out = file_timed_out,
  },
  done = function(state)
    return state.status ~= "idle" and state.pending == 0
  end,
  view = function(state)
    return { id = state.id, files = state.files, status = state.status }
  end,
}
