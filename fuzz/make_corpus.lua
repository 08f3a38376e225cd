--- Write the fuzzers' seed corpora (fuzz/corpus/<harness>/): run once from
-- the checkout when the formats change; the files are kept in the repo.
--   lua5.4 fuzz/make_corpus.lua
package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;" .. package.path
package.cpath = "build/?.so;" .. package.cpath
local procman = require "procman"
local batch = require "procman.workflows.batch"

local function write(dir, name, bytes)
  os.execute("mkdir -p fuzz/corpus/" .. dir)
  local f = assert(io.open("fuzz/corpus/" .. dir .. "/" .. name, "wb"))
  f:write(bytes)
  f:close()
end

-- decode: encodings of values of every kind
local values = {
  0, 1, -1, 127, 128, -33, 255, 65536, math.maxinteger, math.mininteger, 1.5, -0.0, 1 / 0, 0 / 0,
  "", "text", string.rep("x", 40), string.rep("y", 300), "\0\255binary", true, false,
  {}, { 1, 2, 3 }, { a = 1, b = { c = { d = { 1 } } } }, { [1] = "a", [3] = "c", x = false },
  { [-5] = 1, [2 ^ 40] = 2, [1.5] = 3 },
  -- an outbox envelope (the decoder for its known keys), one with nil values written
  { command = { command_type = "process_file", file = "a" }, flow = 17, id = "batch/17/1/1",
    workflow = "batch" },
}
for i, v in ipairs(values) do write("decode", string.format("value%02d", i), procman.encode(v)) end
write("decode", "envelope_nils", "\x84\xa7command\xc0\xa4flow\xc0\xa2id\xc0\xa8workflow\xc0")

-- handle: events, as the harness decodes them
local events = {
  { event_type = "batch_created", files = { "a", "b" } },
  { event_type = "file_processed", file = { id = "a", status = "success" } },
  { event_type = "file_processed", file = { id = "b", status = "error" }, event_id = "e1" },
  { event_type = "file_processed", file = { id = "c", status = "error", attempt = 1 } },
  { event_type = "file_timed_out", file = "a", attempt = 1 },
  { event_type = "x", payload = { 1, 2, { deep = true } } },
  { event_type = "x", boom = "refused" },
  { event_type = "x", loop = true },
  { event_type = "x", commands = { { command_type = "c" }, { nope = 1 } } },
  { event_type = "x", commands = { procman.after(5, { event_type = "x" }, "k") } },
  { event_type = "nope" },
  -- for the sandboxed, long-lived flow: its string functions, undo, trim,
  -- a map over 16 pairs, and one large event (the next one snapshots)
  { event_type = "x", s = "key = 42, other = 7", p = "(%a+)%s*=%s*(%d+)" },
  { event_type = "x", s = "abc", p = "[a" },
  { event_type = "x", s = "ab", rep = 1 << 40 },
  { event_type = "x", undo = true, n = 1 },
  { event_type = "x", trim = true },
  { event_type = "x", wide = { a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8, i = 9, j = 10,
                               k = 11, l = 12, m = 13, n = 14, o = 15, p = 16, q = 17, [1.5] = true } },
  { event_type = "x", pad = string.rep("z", 5000) },
}
for i, e in ipairs(events) do write("handle", string.format("event%02d", i), procman.encode(e)) end

-- journal: a real router journal, and damaged copies of it
local path = os.tmpname() .. ".pmj"
local r = assert(procman.router { workflows = { batch }, journal = path, clock = function() return 0 end })
r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" }, file_timeout = 5 }
r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } }
r:ack("batch/b1/1/1")
r:tick(10)
r:close()
local f = assert(io.open(path, "rb"))
local journal = f:read("a")
f:close()
os.remove(path)
write("journal", "whole", journal)
write("journal", "torn", journal:sub(1, #journal - 7))
write("journal", "header", journal:sub(1, 16))
write("journal", "damaged", journal:sub(1, 40) .. "\0" .. journal:sub(42))
print("corpora written under fuzz/corpus/")

-- pattern: a byte with the pattern's length, the pattern, the subject
local patterns = {
  { "(%a+)%s*=%s*(%d+)", "key = 42" }, { "%b()", "f(a(b)c)d" }, { "%f[%w]%w+", "THE (quick) fox" },
  { "^(.-)%s*$", "trailing   " }, { "(a*(.)%w(%s*))", "aaab  c" }, { "[%]%-]+", "a]-]b" },
  { "()ll()", "hello" }, { "(.)%1", "abccd" }, { ("a*"):rep(8) .. "b", ("a"):rep(60) },
  { "[^%d%s]+$", "12 ab" }, { "%", "x" }, { "[a", "a" }, { "(()", "x" }, { "plain.text", "a plain.text" },
}
for i, case in ipairs(patterns) do
  write("pattern", string.format("case%02d", i), string.char(#case[1]) .. case[1] .. case[2])
end

-- recovery: journals of the records the scan in C takes (events applied,
-- completed, acked; compacted: sequence, completed, live, pending), one
-- that hands over to the Lua fold (a timer), and MessagePack values
-- (canonical or not) for its check of canonical bytes
local function journal_of(fill)
  local p = os.tmpname() .. ".pmj"
  local w = assert(procman.router { workflows = { batch }, journal = p, clock = function() return 0 end })
  fill(w)
  w:close()
  local file = assert(io.open(p, "rb"))
  local bytes = file:read("a")
  file:close()
  os.remove(p)
  return bytes
end
local function common(w)
  for i = 1, 3 do w:handle { event_type = "batch_created", batch_id = i, event_id = "c" .. i, files = { "a" } } end
  w:handle { event_type = "batch_created", batch_id = "\xff", files = { "a", "b" } }
  w:handle { event_type = "file_processed", batch_id = 1, event_id = "p1", file = { id = "a", status = "success" } }
  w:ack("batch/2/1/1")
end
write("recovery", "common", journal_of(common))
write("recovery", "compacted", journal_of(function(w)
  common(w)
  assert(w:compact())
  w:handle { event_type = "file_processed", batch_id = 2, event_id = "p2", file = { id = "a", status = "error" } }
end))
write("recovery", "timer", journal_of(function(w)
  common(w)
  w:handle { event_type = "batch_created", batch_id = 9, files = { "a" }, file_timeout = 5 }
  w:handle { event_type = "file_processed", batch_id = 3, event_id = "p3", file = { id = "a", status = "success" } }
end))
write("recovery", "value-canonical", procman.encode { command_type = "c", n = { 1, 2.5, "\xff", -200 } })
write("recovery", "value-long-int", "\x81\xa1n\xce\x00\x00\x00\x05")
write("recovery", "value-float32", "\x91\xca\x3f\x80\x00\x00")
