--- procman.dead_letters: the events a router set aside, each with a
-- stable id, the event, the reason (error) and the time it was set aside.
-- The router and procman.journal_view (procman inspect, dead-letters) keep
-- theirs here, so the same journal gives the same letters with the same
-- ids in both.
--
-- Ids are integers from 1, in the order letters were made, never reused:
-- compaction journals the next id (with the sequence counter), so an id
-- dropped before a compaction is not given again after it. Letters of
-- journals written before ids existed take the next id as they are read,
-- which gives the same ids on every read.
local M = {}
M.__index = M

function M.new()
  return setmetatable({ list = {}, next_id = 1 }, M)
end

--- letters:add(letter) -> letter: letter = { event, error, time, id }
-- (the table is kept; an id is given when it has none).
function M:add(letter)
  if letter.id == nil then letter.id = self.next_id end
  if letter.id >= self.next_id then self.next_id = letter.id + 1 end
  self.list[#self.list + 1] = letter
  return letter
end

--- letters:find(id) -> letter, position; or nil.
function M:find(id)
  for i, letter in ipairs(self.list) do
    if letter.id == id then return letter, i end
  end
  return nil
end

--- letters:remove(id) -> the letter removed, or nil.
function M:remove(id)
  local letter, i = self:find(id)
  if letter then table.remove(self.list, i) end
  return letter
end

--- letters:skip_to(next_id): ids below next_id are spent (compaction).
function M:skip_to(next_id)
  if next_id and next_id > self.next_id then self.next_id = next_id end
end

function M:count()
  return #self.list
end

return M
