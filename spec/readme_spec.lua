-- The Lua examples in README.md run as they are written.
local function lua_blocks(path)
  local f = assert(io.open(path))
  local text = f:read("a")
  f:close()
  local blocks = {}
  for code in text:gmatch("```lua\n(.-)```") do blocks[#blocks + 1] = code end
  return blocks
end

describe("README.md", function()
  local blocks = lua_blocks("README.md")

  it("has Lua examples", function()
    assert.is_true(#blocks >= 2)
  end)

  -- Run an example, collecting what it prints.
  local function run(i)
    local printed = {}
    local env = setmetatable({ print = function(...)
      local parts = {}
      for j = 1, select("#", ...) do parts[j] = tostring((select(j, ...))) end
      printed[#printed + 1] = table.concat(parts, "\t")
    end }, { __index = _G })
    assert(load(blocks[i], "=README example " .. i, "t", env))()
    return printed
  end

  for i = 1, #blocks do
    it("example " .. i .. " runs", function() run(i) end)
  end

  it("example 3 recovers the flow it shows", function()
    local printed = run(3)
    assert.same({ "send\tbatch/b7/1/1\ta", "send\tbatch/b7/1/2\tb",
                  "procman.pm: batch/b7 (pending, v2)" }, printed)
  end)

  it("example 2 prints what it says", function()
    local printed = run(2)
    assert.equal("procman.pm: refund/r-421 (requested, v1)", printed[1])
    assert.equal("requested\t1\tr-421\t1\trequested", printed[2])
  end)
end)
