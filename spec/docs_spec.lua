-- The docs' small slips: every method is listed, the README stands alone.
local read = require("spec.support.files").bytes

describe("docs/api.md", function()
  local api = read("docs/api.md")

  it("lists every method of procman.pm, in its contents and in its tables", function()
    local pm = require("procman.workflows.batch"):new("b1")
    local contents = api:match("%- %[procman%.pm%]%(#procmanpm%-one%-live%-flow%):(.-)\n%- ")
    for name in pairs(getmetatable(pm).__index) do
      assert.matches("`" .. name .. "`", contents, 1, true)
      assert.is_truthy(api:find("`pm:" .. name .. "(", 1, true) or api:find("### pm:" .. name .. "(", 1, true))
    end
  end)

  it("shows procman.load's limits in a form procman.load takes", function()
    local limits = assert(api:match('procman%.load%("workflows/big%.lua", (%b{})%)'))
    local wf, err = require("procman").loadstring(
      'return procman.workflow { name = "w", on = { e = function() end } }', "=big",
      assert(load("return " .. limits))())
    assert.is_nil(err)
    assert.is_truthy(wf)
  end)

  it("says where procman.testing's failures point and how busted counts them", function()
    assert.not_matches("Failures raise at the\nline of the expectation, so busted reports them there", api, 1, true)
    assert.matches("Under busted\nit counts as a failure, not an error", api, 1, true)
  end)
end)

describe("README.md", function()
  local readme = read("README.md")

  it("does not send a reader of a clone to files a clone lacks", function()
    assert.not_matches("../shared/", readme, 1, true)
    assert.matches("Creating a Simple Process Manager", readme, 1, true)
  end)

  it("installs with LUA_PATH_5_4, and says why", function()
    assert.matches('export LUA_PATH_5_4="$(luarocks --lua-version=5.4 path --tree "$tree" --lr-path);;"',
                   readme, 1, true)
    assert.matches("Debian's `busted` launcher, which runs on Lua 5.1", readme, 1, true)
  end)
end)
