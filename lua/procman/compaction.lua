--- procman.compaction: rewrite a router's journal as the state it holds
-- now (snapshots of the live flows, the completed set, parked flows,
-- timers, dead letters and the pending outbox), so that recovery time
-- depends on live state, not on all of history. The records are the
-- state's as procman.fold writes them (fold.state_records, the inverse of
-- its fold); this module does the file's part: write, sync, rename, reopen.
local core = require "procman.core"
local fold = require "procman.fold"

local encode = core.encode

local M = {}

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
  fold.forget_seen(self)
end

--- compact(router) -> true, or nil, message. Written to a temporary file
-- in the same directory (created with O_EXCL), synced, renamed over the
-- journal, the directory synced. A failure before the rename leaves
-- everything as it was; one after it closes the router (reopening the
-- journal gives the same state).
function M.compact(self)
  local tmp = self.journal_path .. ".compact"
  local ok, err = write_journal(tmp, fold.state_records(self))
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
  pcall(fold.trim_histories, self)  -- out of memory: the histories stay, bounded anyway
  return true
end

return M
