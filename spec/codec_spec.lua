-- procman.encode / procman.decode: the MessagePack codec.
local procman = require "procman"

local encode, decode = procman.encode, procman.decode

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function unhex(h)
  return (h:gsub("%s", ""):gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

-- Deep equality that tells integers from floats, -0.0 from 0.0, and
-- treats NaN as equal to NaN.
local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    if math.type(a) ~= math.type(b) then return false end
    if a ~= a then return b ~= b end
    return a == b and (a ~= 0 or 1 / a == 1 / b)
  end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Random values: a large, reproducible sample of everything the codec takes.
local INTS = { 0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,
               math.maxinteger, math.mininteger, -1, -31, -32, -33, -127, -128, -129,
               -32768, -32769, -2147483648, -2147483649 }
local FLOATS = { 0.0, -0.0, 1 / 0, -1 / 0, 0 / 0, 0.5, -1.5, 1e308, 5e-324, math.pi, 2 ^ 63, -(2 ^ 63) }

local random_value

local function random_string()
  local n = ({ 0, 1, 5, 31, 32, 255, 256, 300 })[math.random(8)]
  local bytes = {}
  local binary = math.random() < 0.3
  for i = 1, n do bytes[i] = binary and math.random(0, 255) or math.random(32, 126) end
  return string.char(table.unpack(bytes))
end

local function random_key()
  local r = math.random(5)
  if r == 1 then return math.random(-1000, 1000) end
  if r == 2 then return math.random() * 100 end
  if r == 3 then return math.random() < 0.5 end
  return random_string()
end

local function random_table(depth, width)
  local t = {}
  width = width or 8
  if math.random() < 0.5 then
    for i = 1, math.random(0, width) do t[i] = random_value(depth + 1) end
  else
    for _ = 1, math.random(0, width) do
      local k = random_key()
      if k == k then t[k] = random_value(depth + 1) end
    end
  end
  return t
end

function random_value(depth)
  local r = math.random(depth > 3 and 6 or 8)
  if r == 1 then return INTS[math.random(#INTS)] end
  if r == 2 then return math.random(math.mininteger, math.maxinteger) end
  if r == 3 then return FLOATS[math.random(#FLOATS)] end
  if r == 4 then return (math.random() - 0.5) * 10 ^ math.random(-300, 300) end
  if r == 5 then return random_string() end
  if r == 6 then return math.random() < 0.5 end
  return random_table(depth)
end

describe("the codec", function()
  it("round-trips a large random sample of values, deterministically", function()
    math.randomseed(20261130)
    for _ = 1, 3000 do
      local v = random_value(0)
      local bytes = encode(v)
      local back = decode(bytes)
      if not same(v, back) then
        error("round trip changed a value; encoding " .. hex(bytes))
      end
      assert.equal(bytes, encode(back))
      local copy = procman.copy(v)
      if not same(back, copy) then
        error("copy differs from decode(encode(v)); encoding " .. hex(bytes))
      end
    end
  end)

  it("copy() gives fresh tables, canonical NaN, and refuses what encode refuses", function()
    local inner = { 1 }
    local v = { a = inner, b = inner, n = -(0 / 0), z = -0.0 }
    local c = procman.copy(v)
    assert.are_not.equal(inner, c.a)
    assert.are_not.equal(c.a, c.b)
    assert.same({ 1 }, c.b)
    -- NaNs of either sign copy to the one NaN decode gives (tostring shows the sign)
    local nan1, nan2 = procman.copy(0 / 0), procman.copy(-(0 / 0))
    assert.equal(tostring(decode(encode(0 / 0))), tostring(nan1))
    assert.equal(tostring(nan1), tostring(nan2))
    assert.is_true(c.n ~= c.n)
    assert.equal(-1 / 0, 1 / c.z)
    assert.equal("x", procman.copy("x"))
    assert.has_error(function() procman.copy({ f = print }) end,
      "procman.copy: cannot encode a function (only nil, booleans, numbers, strings and tables are data) at value.f")
  end)

  it("copies without making the bytes (procman.copy, pm:state(), a guard's table results)", function()
    local core = require "procman.core"
    local big = string.rep("x", 16 * 1024 * 1024)
    local function growth(f)  -- KB the heap grows by while f runs, with the collector stopped
      collectgarbage()
      collectgarbage("stop")
      local before = collectgarbage("count")
      local result = f()
      local kb = collectgarbage("count") - before
      collectgarbage("restart")
      return kb, result
    end
    local kb, copy = growth(function() return procman.copy { s = big, t = { big, 1 } } end)
    assert.equal(big, copy.t[1])
    assert.is_true(kb < 64, kb .. " KB")
    local wf = procman.workflow { name = "w", on = { go = function(state, e) state.s = e.s end } }
    local pm = wf:new(1)
    pm:handle { event_type = "go", s = big }
    kb, copy = growth(function() return pm:state() end)
    assert.equal(big, copy.s)
    assert.is_true(kb < 64, kb .. " KB")
    local results = core.guard(function() return { big } end, 0, 0, core.guard_flags.copy)
    kb, copy = growth(results)
    assert.equal(big, copy[1])
    assert.is_true(kb < 64, kb .. " KB")
  end)

  it("encodes right when a finalizer encodes while it runs (the scratch buffer is not shared)", function()
    local inner = {}
    local function garbage()
      for _ = 1, 200 do
        setmetatable({}, { __gc = function() inner[#inner + 1] = procman.encode { "from a finalizer", #inner } end })
      end
    end
    local big = {}
    for i = 1, 2000 do big["k" .. i] = { i, tostring(i) } end
    local expected = procman.encode(big)
    collectgarbage("generational")
    for _ = 1, 20 do
      garbage()
      assert.equal(expected, procman.encode(big))
      garbage()
      assert.same(big, procman.copy(big))
    end
    collectgarbage("incremental")
    collectgarbage()
    assert.is_true(#inner > 0)
    for i, bytes in ipairs(inner) do assert.equal("from a finalizer", procman.decode(bytes)[1], i) end
  end)

  it("gives the same bytes from a scratch buffer that grew and was let go", function()
    local huge = string.rep("x", 100000)
    local small = { a = 1, b = "two" }
    local before = procman.encode(small)
    assert.equal(100000 + 5, #procman.encode(huge))
    assert.equal(before, procman.encode(small))
    assert.same(small, procman.decode(procman.encode(small)))
  end)

  it("writes standard MessagePack in its shortest form", function()
    local cases = {
      { nil, "c0" }, { false, "c2" }, { true, "c3" },
      { 0, "00" }, { 127, "7f" }, { 128, "cc80" }, { 255, "ccff" }, { 256, "cd0100" },
      { 65536, "ce00010000" }, { 4294967296, "cf0000000100000000" },
      { -1, "ff" }, { -32, "e0" }, { -33, "d0df" }, { -129, "d1ff7f" },
      { -32769, "d2ffff7fff" }, { -2147483649, "d3ffffffff7fffffff" },
      { math.maxinteger, "cf7fffffffffffffff" }, { math.mininteger, "d38000000000000000" },
      { 1.5, "cb3ff8000000000000" }, { -0.0, "cb8000000000000000" },
      { 1 / 0, "cb7ff0000000000000" }, { 0 / 0, "cb7ff8000000000000" },
      { "", "a0" }, { "abc", "a3616263" }, { string.rep("x", 32), "d920" .. string.rep("78", 32) },
      { "\xff", "c401ff" }, { "é", "a2c3a9" },
      { {}, "80" }, { { 1, 2 }, "920102" }, { { a = 1 }, "81a16101" },
      { { [2] = "x" }, "8102a178" },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[2], hex(encode(c[1])))
    end
  end)

  it("sorts map keys: false, true, numbers by value, then strings bytewise", function()
    local t = { b = 1, a = 2, ab = 3, [10] = 4, [-1] = 5, [2.5] = 6, [true] = 7, [false] = 8 }
    assert.equal("88" .. "c208" .. "c307" .. "ff05" .. "cb400400000000000006" .. "0a04"
                 .. "a16102" .. "a2616203" .. "a16201", hex(encode(t)))
  end)

  it("gives the same bytes whatever the insertion order", function()
    local a, b = {}, {}
    for i = 1, 200 do a["k" .. i] = i end
    for i = 200, 1, -1 do b["k" .. i] = i end
    b.extra = 1
    b.extra = nil
    assert.equal(encode(a), encode(b))
  end)

  it("orders integer and float keys exactly, even beyond 2^53", function()
    local t = { [math.maxinteger] = "i", [2.0 ^ 63] = "f", [-(2.0 ^ 63) * 2] = "g" }
    local bytes = encode(t)
    assert.equal(bytes, encode(decode(bytes)))
    assert.same(t, decode(bytes))
  end)

  it("keeps integers integers and floats floats", function()
    assert.equal("integer", math.type(decode(encode(3))))
    assert.equal("float", math.type(decode(encode(3.0))))
    assert.equal(-1 / 0, 1 / decode(encode(-0.0)))
  end)

  it("nests up to max_depth tables, and no deeper", function()
    assert.equal(100, procman.max_depth)
    local t = {}
    for _ = 2, procman.max_depth do t = { t } end
    assert.is_true(same(t, decode(encode(t))))
    local ok, err = pcall(encode, { t })
    assert.is_false(ok)
    assert.matches("^procman%.encode: cannot encode tables nested more than 100 deep at value%.%.%.%[1%]", err)
    assert.matches(string.rep("%[1%]", 50) .. "$", err)
  end)

  describe("refuses to encode", function()
    local function refuses(v, message)
      local ok, err = pcall(encode, v)
      assert.is_false(ok)
      assert.equal(message, err)
    end
    it("functions, threads and userdata, saying where", function()
      refuses(print, "procman.encode: cannot encode a function (only nil, booleans, numbers, strings "
              .. "and tables are data) at value")
      refuses({ a = { 1, coroutine.create(print) } }, "procman.encode: cannot encode a thread (only nil, "
              .. "booleans, numbers, strings and tables are data) at value.a[2]")
      refuses({ ["a b"] = io.stdout }, "procman.encode: cannot encode a FILE* (only nil, booleans, "
              .. "numbers, strings and tables are data) at value[\"a b\"]")
    end)
    it("cycles", function()
      local t = { x = {} }
      t.x.back = t
      refuses(t, "procman.encode: cannot encode a cycle (a table that contains itself) at value.x.back")
      -- named where the first repeat begins, whatever the way round
      local a = { b = { c = {} } }
      a.b.c.d = a.b
      refuses({ a = a }, "procman.encode: cannot encode a cycle (a table that contains itself) at value.a.b.c.d")
      local big, arr = {}, { 1, 2 }
      for i = 1, 20 do big["k" .. i] = i end
      big.k5, arr[3] = arr, big
      refuses(big, "procman.encode: cannot encode a cycle (a table that contains itself) at value.k5[3]")
      local selfish = {}
      selfish[1] = selfish
      refuses(selfish, "procman.encode: cannot encode a cycle (a table that contains itself) at value[1]")
      local deep = {}
      local inner = deep
      for _ = 1, 98 do inner.n = {}; inner = inner.n end
      inner.n = inner  -- a cycle at the depth limit
      local ok, err = pcall(encode, deep)
      assert.is_false(ok)
      assert.equal("procman.encode: cannot encode a cycle (a table that contains itself) at value"
                   .. string.rep(".n", 99), err)
      assert.has_error(function() procman.copy({ x = t }) end,
        "procman.copy: cannot encode a cycle (a table that contains itself) at value.x.x.back")
    end)
    it("keys that are not strings, numbers or booleans", function()
      refuses({ [{}] = 1 }, "procman.encode: cannot encode a key of type table (keys must be strings, "
              .. "numbers or booleans) at value")
      local big = {}
      for i = 1, 40 do big["k" .. i] = i end
      big[print] = 1
      assert.has_error(function() encode(big) end)
    end)
    it("but encodes shared (acyclic) subtables twice", function()
      local shared = { 1 }
      assert.same({ a = { 1 }, b = { 1 } }, decode(encode({ a = shared, b = shared })))
    end)
  end)

  describe("refuses to decode, never crashing", function()
    local function refuses(bytes, message)
      local ok, err = pcall(decode, bytes)
      assert.is_false(ok)
      assert.is_string(err)
      if message and not err:find(message, 1, true) then
        error(string.format("%q does not contain %q", err, message), 2)
      end
    end
    it("every truncation of a valid encoding", function()
      math.randomseed(7)
      for _ = 1, 100 do
        local bytes = encode(random_table(1, 4))
        for n = 0, #bytes - 1 do refuses(bytes:sub(1, n)) end
      end
      refuses("", "procman.decode: cannot decode: input ends inside a value (1 more bytes needed) at byte 0")
      refuses(unhex("92 cd 00"), "input ends inside an integer (1 more bytes needed) at byte 2")
      refuses(unhex("a5 6162"), "input ends inside a str (3 more bytes needed) at byte 1")
    end)
    it("bytes left over", function()
      refuses(unhex("01 02"), "procman.decode: 1 bytes left over after the value that ends at byte 1")
    end)
    it("tags MessagePack never uses, and ext types", function()
      refuses(unhex("c1"), "byte 0xc1 is never used in MessagePack at byte 0")
      for _, tag in ipairs({ "c7", "c8", "c9", "d4", "d5", "d6", "d7", "d8" }) do
        refuses(unhex(tag .. "0000000000000000000000"), "ext types are not supported (tag 0x" .. tag .. ")")
      end
    end)
    it("lengths larger than the input", function()
      refuses(unhex("dd ffffffff 01"), "array of 4294967295 elements is larger than the input at byte 0")
      refuses(unhex("df ffffffff 01"), "map of 4294967295 elements is larger than the input")
      refuses(unhex("db ffffffff 61"), "input ends inside a str (4294967294 more bytes needed)")
      refuses(unhex("c6 7fffffff"), "input ends inside a bin")
      refuses(unhex("81 01"), "map of 1 elements is larger than the input")
    end)
    it("bad map keys", function()
      refuses(unhex("82 a161 01 a161 02"), "duplicate map key at byte 4")
      refuses(unhex("82 01 01 cb3ff0000000000000 02"), "duplicate map key")
      refuses(unhex("81 c0 01"), "map key nil is not allowed at byte 1")
      refuses(unhex("81 cb7ff8000000000000 01"), "map key NaN is not allowed")
      refuses(unhex("81 80 01"), "map key table is not allowed")
    end)
    it("integers beyond Lua's range", function()
      refuses(unhex("cf 8000000000000000"), "unsigned integer 9223372036854775808 is out of Lua's range at byte 0")
    end)
    it("nesting past max_depth", function()
      assert.is_table(decode(string.rep("\x91", 100) .. "\xc0"))
      refuses(string.rep("\x91", 101) .. "\xc0", "array nested more than 100 deep at byte 100")
    end)
    it("anything but a string", function()
      assert.has_error(function() decode({}) end)
    end)
  end)

  it("reads what other producers may write", function()
    assert.equal(1.5, decode(unhex("ca 3fc00000")))            -- float32
    assert.equal(5, decode(unhex("cd 0005")))                  -- non-shortest integer
    assert.equal(-2, decode(unhex("d3 fffffffffffffffe")))
    assert.equal("ab", decode(unhex("c4 02 6162")))            -- bin
    assert.same({ a = 1 }, decode(unhex("82 a161 01 a162 c0")))  -- nil value: absent
    assert.same({ 1, 2 }, decode(unhex("dc 0002 01 02")))
  end)
end)

-- The encoder's bytes, pinned: a digest of today's encoding of a large
-- sample, taken before the encoder's fast paths (issue 11) were written.
-- Replay compares bytes, so any change to them is a format change: if this
-- fails, the encoder changed its output (find the value with the reference
-- encoding in codec_golden_values' order).
local function fnv1a(h, s)
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return h
end

local UTF8 = { "é", "日本語", "\u{10FFFF}", "a\u{7FF}b", "\u{FFFF}", "ascii only" }

-- Values shaped like what the engine encodes most (events, commands,
-- states: small maps of string keys) and around each fast path's edges:
-- maps of 15 to 17 pairs, keys that are prefixes of each other, numeric
-- strings, mixed key kinds, valid multi-byte UTF-8 beside binary.
local function golden_values()
  math.randomseed(20261203)
  local values = {}
  for _ = 1, 1500 do values[#values + 1] = random_value(0) end
  local names = { "a", "ab", "abc", "b", "event_id", "event_type", "batch_id", "files", "file",
                  "10", "9", "", "A", "z", "status", "zz" }
  for _ = 1, 1500 do
    local t = {}
    for _ = 1, math.random(0, 18) do
      local k = names[math.random(#names)]
      local r = math.random(6)
      if r == 1 then t[k] = { id = names[math.random(#names)], status = "success" }
      elseif r == 2 then t[k] = { "x", "y", UTF8[math.random(#UTF8)] }
      elseif r == 3 then t[k] = math.random(-100000, 100000)
      elseif r == 4 then t[k] = UTF8[math.random(#UTF8)]
      elseif r == 5 then t[k] = random_string()
      else t[k] = math.random() < 0.5 end
    end
    if math.random() < 0.2 then t[math.random(-5, 20)] = "n" end
    if math.random() < 0.1 then t[math.random() < 0.5] = 1 end
    if math.random() < 0.1 then t[math.random() * 10] = 2 end
    values[#values + 1] = t
  end
  for n = 14, 18 do  -- maps and arrays around SMALL_MAP (16)
    local m, a = {}, {}
    for i = 1, n do m["k" .. i] = i; a[i] = "v" .. i end
    values[#values + 1] = m
    values[#values + 1] = a
  end
  return values
end

describe("the encoder's output", function()
  it("is byte for byte what it was before its fast paths (a digest of a large sample)", function()
    local h, total = 2166136261, 0
    for _, v in ipairs(golden_values()) do
      local bytes = encode(v)
      local bytes2, copy = procman.encode(procman.copy(v)), procman.copy(v)
      assert.equal(bytes, bytes2)
      assert.equal(bytes, encode(copy))
      h = fnv1a(fnv1a(h, string.pack("<I4", #bytes)), bytes)
      total = total + #bytes
    end
    assert.equal(562918, total)
    assert.equal(354521741, h)
  end)
end)

-- A second encoder, in plain Lua, written from docs/codec.md: the C
-- encoder's fast paths (8-byte key heads, keys sorted by index, arrays taken
-- in lua_next order, short strings checked for UTF-8 while copied) must give
-- its bytes on values made to hit each of their edges.
local function bytes_before(a, b)  -- bytewise, a prefix first
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function key_rank(k)
  if k == false then return 0 end
  if k == true then return 1 end
  if type(k) == "number" then return 2 end
  return 3
end

local function key_before(a, b)
  local ra, rb = key_rank(a), key_rank(b)
  if ra ~= rb then return ra < rb end
  if ra == 2 then return a < b end  -- Lua compares integers and floats exactly
  if ra == 3 then return bytes_before(a, b) end
  return false
end

local function sized(n, fix, fixmax, tag8, tag16, tag32)
  if fixmax and n <= fixmax then return string.char(fix | n) end
  if tag8 and n <= 0xff then return string.char(tag8, n) end
  if n <= 0xffff then return string.char(tag16) .. string.pack(">I2", n) end
  return string.char(tag32) .. string.pack(">I4", n)
end

local function reference_encode(v, out)
  local t = math.type(v) or type(v)
  if v == nil then out[#out + 1] = "\xc0"
  elseif t == "boolean" then out[#out + 1] = v and "\xc3" or "\xc2"
  elseif t == "integer" then
    if v >= -32 and v <= 127 then out[#out + 1] = string.pack(">i1", v)
    elseif v > 0 then
      if v <= 0xff then out[#out + 1] = "\xcc" .. string.pack(">I1", v)
      elseif v <= 0xffff then out[#out + 1] = "\xcd" .. string.pack(">I2", v)
      elseif v <= 0xffffffff then out[#out + 1] = "\xce" .. string.pack(">I4", v)
      else out[#out + 1] = "\xcf" .. string.pack(">i8", v) end
    elseif v >= -128 then out[#out + 1] = "\xd0" .. string.pack(">i1", v)
    elseif v >= -32768 then out[#out + 1] = "\xd1" .. string.pack(">i2", v)
    elseif v >= -2147483648 then out[#out + 1] = "\xd2" .. string.pack(">i4", v)
    else out[#out + 1] = "\xd3" .. string.pack(">i8", v) end
  elseif t == "float" then
    out[#out + 1] = v ~= v and "\xcb\x7f\xf8\0\0\0\0\0\0" or "\xcb" .. string.pack(">d", v)
  elseif t == "string" then
    if utf8.len(v) then out[#out + 1] = sized(#v, 0xa0, 31, 0xd9, 0xda, 0xdb)
    else out[#out + 1] = sized(#v, nil, nil, 0xc4, 0xc5, 0xc6) end
    out[#out + 1] = v
  else
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, key_before)
    local array = #keys > 0
    for i, k in ipairs(keys) do array = array and k == i and math.type(k) == "integer" end
    if array then
      out[#out + 1] = sized(#keys, 0x90, 15, nil, 0xdc, 0xdd)
      for i = 1, #keys do reference_encode(v[i], out) end
    else
      out[#out + 1] = sized(#keys, 0x80, 15, nil, 0xde, 0xdf)
      for _, k in ipairs(keys) do
        reference_encode(k, out)
        reference_encode(v[k], out)
      end
    end
  end
  return out
end

-- Strings around the fast paths' edges: lengths 0 to 40 (8 and 16 bytes
-- cut the ASCII check and the key heads), shared prefixes, zero bytes,
-- a multi-byte character or a bad byte anywhere.
local function edge_string()
  local n = math.random(0, 40)
  local bytes = {}
  for i = 1, n do bytes[i] = string.byte(("ab\0_ez"):sub(math.random(6))) end
  local s = string.char(table.unpack(bytes))
  local r, at = math.random(6), math.random(0, n)
  if r == 1 then s = s:sub(1, at) .. "é" .. s:sub(at + 1)
  elseif r == 2 then s = s:sub(1, at) .. string.char(math.random(0x80, 0xff)) .. s:sub(at + 1)
  elseif r == 3 then s = s:sub(1, at) .. "\u{10FFFF}" .. s:sub(at + 1)
  elseif r == 4 then s = ("event_"):rep(math.random(0, 3)) .. s end
  return s
end

local function edge_table(depth)
  local t = {}
  local shape = math.random(4)
  local n = math.random(0, 18)
  for i = 1, n do
    local v
    if depth < 3 and math.random() < 0.2 then v = edge_table(depth + 1)
    elseif math.random() < 0.5 then v = edge_string()
    else v = ({ 0, -33, 300, 1.5, 0 / 0, true })[math.random(6)] end
    if shape == 1 then t[i] = v                             -- an array, built in order
    elseif shape == 2 then t[n + 1 - i] = v                 -- built backwards
    elseif shape == 3 then t[edge_string()] = v             -- string keys
    else                                                    -- any keys
      local k = ({ edge_string(), math.random(-3, 20), math.random() < 0.5, 2 ^ 53 + 0.0, 0.5 })[math.random(5)]
      t[k] = v
    end
  end
  return t
end

-- Deep equality that also asks for the same pairs() order.
local function same_order(a, b)
  if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
  if type(b) ~= "table" then return false end
  local ka, kb = next(a), next(b)
  while ka ~= nil or kb ~= nil do
    if ka ~= kb or not same_order(a[ka], b[kb]) then return false end
    ka, kb = next(a, ka), next(b, kb)
  end
  return true
end

describe("the encoder against a reference encoder in Lua", function()
  it("gives the reference's bytes on random values and tables made for its fast paths", function()
    math.randomseed(20261203)
    local function check(v)
      local bytes, want = encode(v), table.concat(reference_encode(v, {}))
      if bytes ~= want then error("encoding differs: " .. hex(bytes) .. " against " .. hex(want)) end
    end
    for _ = 1, 300 do check(random_value(0)) end
    for _ = 1, 1500 do check(edge_table(0)) end
  end)

  it("copies into tables that iterate as the decoded ones do", function()
    math.randomseed(11)
    for _ = 1, 500 do
      local v = edge_table(0)
      local copy, decoded = procman.copy(v), decode(encode(v))
      assert.is_true(same_order(copy, decoded))
    end
  end)
end)

describe("core.decode_envelope (the outbox's decoder for an envelope's known keys)", function()
  local core = require "procman.core"
  local decode_envelope = core.decode_envelope

  -- The same outcome as procman.decode: the value (same bytes again), or the same error.
  local function agrees(bytes)
    local ok1, v1 = pcall(decode, bytes)
    local ok2, v2 = pcall(decode_envelope, bytes)
    assert.equal(ok1, ok2)
    if ok1 then
      assert.is_true(same(v1, v2))
    else
      assert.equal(v1, v2)
    end
  end

  local envelope = { command = { command_type = "process_file", file = "a", attempt = 2,
                                 nested = { list = { 1, 2.5, "x" } } },
                     flow = "b1", id = "batch/b1/1/1", workflow = "batch" }

  it("decodes an envelope into new tables, as procman.decode does", function()
    local bytes = encode(envelope)
    local a, b = decode_envelope(bytes), decode_envelope(bytes)
    assert.same(envelope, a)
    assert.are_not.equal(a, b)
    assert.are_not.equal(a.command, b.command)
    agrees(bytes)
  end)

  it("agrees with procman.decode on every cut and every changed byte of an envelope", function()
    local bytes = encode(envelope)
    for n = 0, #bytes do agrees(bytes:sub(1, n)) end
    agrees(bytes .. "\1")
    for i = 1, #bytes do
      for _, c in ipairs { 0x00, 0x80, 0x84, 0x85, 0xa0, 0xc0, 0xc1, 0xd9, 0xff } do
        agrees(bytes:sub(1, i - 1) .. string.char(c) .. bytes:sub(i + 1))
      end
    end
  end)

  it("agrees with procman.decode on other values and shapes", function()
    for _, v in ipairs(golden_values()) do agrees(encode(v)) end
    agrees(encode { command = 1, flow = 2, id = 3 })
    agrees(encode { command = 1, flow = 2, id = 3, workflow = 4, zzz = 5 })
    agrees(unhex "84 a7 636f6d6d616e64 c0 a4 666c6f77 c0 a2 6964 c0 a8 776f726b666c6f77 c0")
    assert.has_error(function() decode_envelope(nil) end)
  end)
end)
