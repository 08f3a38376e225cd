--- procman.compaction: rewrite a router's journal as the state it holds
-- now (snapshots of the live flows, the completed set, parked flows,
-- timers, dead letters and the pending outbox), so that recovery time
-- depends on live state, not on all of history. The router's internals are
-- read here: this module is the router's, not a public API.
local core = require "procman.core"
local records = require "procman.records"
local patches = require "procman.patches"

local encode = core.encode

local RECORD_FLOW, RECORD_OUTBOX, RECORD_COMPLETED, RECORD_SEQ =
  records.FLOW, records.OUTBOX, records.COMPLETED, records.SEQ
local RECORD_TIMER, RECORD_PARKED, RECORD_DEAD = records.TIMER, records.PARKED, records.DEAD

local M = {}

-- The version a flow runs, for its snapshot record (nil: version 1).
local function workflow_version(self, spec, flow_id)
  local v = (self.older[spec.name][flow_id] or spec).version
  if v ~= 1 then return v end
  return nil
end

-- The records of a compacted journal: the router's state now.
local function state_records(self)
  local out = { { RECORD_SEQ, { seq = self.seq } } }
  for _, spec in ipairs(self.specs) do
    for flow_id, final in pairs(self.finished[spec.name]) do  -- ids are let go here
      out[#out + 1] = { RECORD_COMPLETED, { workflow = spec.name, flow = flow_id,
                                                    status = final.status } }
    end
    for flow_id, pm in pairs(self.live[spec.name]) do
      local state, version, seen = core.snapshot(pm)
      out[#out + 1] = { RECORD_FLOW, { workflow = spec.name, flow = flow_id, state = state,
                                               version = version, seen = seen, status = pm:status(),
                                               workflow_version = workflow_version(self, spec, flow_id),
                                               patches = patches.taken(pm) } }
    end
  end
  for _, spec in ipairs(self.specs) do
    local name = spec.name
    for flow_id, p in pairs(self.parked_of[name]) do
      out[#out + 1] = { RECORD_PARKED, { workflow = name, flow = flow_id, error = p.error,
                                                 events = p.events,
                                                 workflow_version = workflow_version(self, spec, flow_id) } }
    end
    for flow_id, list in self.schedule:flows(name) do
      for _, t in ipairs(list) do
        out[#out + 1] = { RECORD_TIMER, { workflow = name, flow = flow_id, key = t.key,
                                                  due = t.due, event = t.event, seq = t.seq,
                                                  index = t.index } }
      end
    end
  end
  for _, letter in ipairs(self.dead) do out[#out + 1] = { RECORD_DEAD, letter } end
  for _, bytes in ipairs(self.outbox:encoded()) do  -- already encoded: journaled as they are
    out[#out + 1] = { RECORD_OUTBOX, bytes }
  end
  return out
end

-- Write the records of 'list' to a new journal at 'tmp', durably; true or nil, message.
local function write_journal(tmp, list)
  os.remove(tmp)  -- left by a compaction that crashed: we hold the lock
  local j, err = core.journal_create(tmp, { sync = "batch" })
  if not j then return nil, err end
  for _, r in ipairs(list) do
    local payload = r[2]
    if type(payload) ~= "string" then payload = encode(payload) end
    local at, why = j:append(r[1], payload)
    if not at then
      j:close()
      os.remove(tmp)
      return nil, why
    end
  end
  local ok, why = j:close()  -- syncs
  if not ok then
    os.remove(tmp)
    return nil, why
  end
  return true
end

-- Past compaction's point of no return: the new journal is in place. Use
-- it, as after a restart (completed flows' ids are gone). 'replaced' is
-- false when its name is not known to be durable: then records appended
-- to it could go with it in a crash, so the router stops instead.
local function switch_journal(self, replaced, why)
  if not replaced then error(why, 0) end
  self.journal:close()  -- the old file, now unlinked
  local j, info = core.journal_open(self.journal_path, { sync = self.sync })
  if not j then error("cannot reopen the journal: " .. info, 0) end
  self.journal = j
  for _, spec in ipairs(self.specs) do
    for _, final in pairs(self.finished[spec.name]) do final.seen = nil end
  end
end

-- The journal now starts each live flow at its snapshot: the events a
-- flow kept to rebuild its state are redundant, let them go.
local function trim_histories(self)
  for _, spec in ipairs(self.specs) do
    for _, pm in pairs(self.live[spec.name]) do core.trim(pm) end
  end
end

--- compact(router) -> true, or nil, message. Written to a temporary file
-- in the same directory (created with O_EXCL), synced, renamed over the
-- journal, the directory synced. A failure before the rename leaves
-- everything as it was; one after it closes the router (reopening the
-- journal gives the same state).
function M.compact(self)
  local tmp = self.journal_path .. ".compact"
  local ok, err = write_journal(tmp, state_records(self))
  if not ok then return nil, "procman.router: compaction failed, the journal is unchanged: " .. err end
  local called, replaced, why, _, renamed = pcall(core.journal_replace, tmp, self.journal_path)
  if not called then  -- raised (out of memory): whether it renamed is unknown
    replaced, why, renamed = false, replaced, true
  end
  if not replaced and not renamed then
    os.remove(tmp)
    return nil, "procman.router: compaction failed, the journal is unchanged: " .. why
  end
  local switched, problem = pcall(switch_journal, self, replaced, why)
  if not switched then
    self.closed = true
    pcall(self.journal.close, self.journal)
    error("procman.router: compacted, but " .. tostring(problem) .. "; this router is closed: open "
          .. "the journal again (before or after a crash it holds the same state)", 0)
  end
  pcall(trim_histories, self)  -- out of memory: the histories stay, bounded anyway
  return true
end

return M
