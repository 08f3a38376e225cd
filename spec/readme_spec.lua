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

  it("example 4 prints what it says", function()
    assert.same({ "1\t30", "0\terror" }, run(4))
  end)

  it("example 2 prints what it says", function()
    local printed = run(2)
    assert.equal("procman.pm: refund/r-421 (requested, v1)", printed[1])
    assert.equal("requested\t1\tr-421\t1\trequested", printed[2])
  end)
end)

describe("docs/writing-workflows.md", function()
  local procman = require "procman"
  local files = require "spec.support.files"
  local blocks = lua_blocks("docs/writing-workflows.md")

  it("has a refund workflow that loads in the sandbox and with require's way", function()
    local path = files.temp_path()
    files.write(path, blocks[1])
    local refund = assert(procman.load(path))
    os.remove(path)
    local as_module = assert(load(blocks[1], "=refund", "t", _ENV))()
    for _, wf in ipairs { refund, as_module } do
      local pm = wf:new("r1")
      assert.same({ { command_type = "check_payment", refund_id = "r1" } },
                  pm:handle { event_type = "refund_requested", amount = 5 })
      assert.same({ { command_type = "pay_back", refund_id = "r1", amount = 5 } },
                  pm:handle { event_type = "payment_checked", ok = true })
      assert.is_true(pm:done())
    end
  end)

  it("has timer handlers that do what the text says", function()
    local source = "return procman.workflow { name = 'orders', correlate = 'order_id', "
                   .. "starts = { 'order_created' }, on = {" .. blocks[2]:match("^on = {(.*)}%s*$") .. "} }"
    local orders = assert(procman.loadstring(source, "=orders"))
    local r = procman.router { workflows = { orders }, clock = function() return 0 end }
    r:handle { event_type = "order_created", order_id = 1 }
    r:handle { event_type = "order_created", order_id = 2 }
    r:handle { event_type = "payment_approved", order_id = 1 }
    local out = r:tick(3600)
    assert.same({ { command_type = "cancel_order", order_id = 2 } }, { out[1].command })
    assert.equal(1, #out)
  end)
end)
