-- procman.testing: given / when / then, checking only inputs and outputs.
local procman = require "procman"
local given = require("procman.testing").given

local reminder = assert(procman.load("spec/fixtures/reminder.lua"))

local function failure(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "the expectation passed")
  return tostring(err)
end

-- The lines of a file that end with "-- HERE".
local function marked_lines(path)
  local lines, n = {}, 0
  for line in io.lines(path) do
    n = n + 1
    if line:find("%-%- HERE$") then lines[#lines + 1] = n end
  end
  return lines
end

describe("procman.testing", function()
  it("checks the commands of an event, directives included", function()
    given(reminder, {})
      :when { event_type = "open", id = "a" }
      :expect { { command_type = "hello", id = "a" },
                procman.after(10, { event_type = "ping", id = "a" }, "ping") }
  end)

  it("takes the flow id from the first event's correlation field", function()
    given(reminder, { { event_type = "open", id = "x7" } })
      :when { event_type = "ping" }
      :expect { { command_type = "pinged", id = "x7", n = 1 } }
    given(reminder, {}, { flow = 3 }):when { event_type = "open" }
      :expect { { command_type = "hello", id = 3 }, procman.after(10, { event_type = "ping", id = 3 }, "ping") }
  end)

  it("moves a fake clock, firing the timers due by then in order", function()
    given(reminder, { { event_type = "open", id = "a" } })
      :after(9):expect {}
      :after(1):expect { { command_type = "pinged", id = "a", n = 1 } }
      :when { event_type = "deadline", at = 30, again = 5 }
      :expect { procman.at(30, { event_type = "ping", id = "a", again = 5 }) }
      :after(20):expect { { command_type = "pinged", id = "a", n = 2 },
                          procman.after(5, { event_type = "ping", id = "a" }) }
      :after(5):expect { { command_type = "pinged", id = "a", n = 3 } }
      :after(1000):expect {}
  end)

  it("cancels and replaces timers by key", function()
    given(reminder, { { event_type = "open", id = "a" }, { event_type = "snooze", id = "a", seconds = 100 } })
      :after(10):expect {}
      :after(90):expect { { command_type = "pinged", id = "a", n = 1 } }
    given(reminder, { { event_type = "open", id = "a" }, { event_type = "stop", id = "a" } })
      :after(1000):expect {}
  end)

  it("checks errors by their text", function()
    given(require "procman.workflows.batch", {})
      :when { event_type = "file_processed", file = { id = "f", status = "success" } }
      :expect_error("the batch has not been created yet")
  end)

  it("shows a readable diff when the commands differ", function()
    local err = failure(function()
      given(reminder, {}):when { event_type = "open", id = "a" }
        :expect { { command_type = "hello", id = "b" } }
    end)
    assert.equal(table.concat({
      "commands differ (expected 1, got 2):",
      '  - [1] { command_type = "hello", id = "b" }',
      '  + [1] { command_type = "hello", id = "a" }',
      '  + [2] { command_type = "procman.after", event = { event_type = "ping", id = "a" }, key = "ping", seconds = 10 }',
      "(- expected, + actual)",
    }, "\n"), err:gsub("^[^\n]-:%d+: ", ""))
    assert.matches("^spec/testing_spec.lua:%d+: ", err)  -- points at the expectation
  end)

  it("points at the failing expectation's own line, not the chain's first", function()
    local first_line = debug.getinfo(1, "l").currentline + 2
    local err = failure(function()
      given(reminder, {})
        :when { event_type = "open", id = "a" }
        :expect { { command_type = "hello", id = "a" },
                  procman.after(10, { event_type = "ping", id = "a" }, "ping") }
        :after(10)
        :expect { "not this one" } -- ":expect" in a string or comment does not count
        :after(5)
        :expect {}
    end)
    assert.equal("spec/testing_spec.lua:" .. (first_line + 5) .. ":", err:match("^[^ ]+"))
    local chunk = "local given, wf = ...\n" .. "given(wf, {})\n" .. "  :when { event_type = 'open', id = 'a' }\n"
                  .. "  :expect_error [[:expect]]\n"
    err = failure(function() assert(load(chunk, chunk))(given, reminder) end)
    assert.matches(":4: expected an error", err, 1, true)
  end)

  it("points at the expectation in a loop too, and past comments in a chain", function()
    local first_line = debug.getinfo(1, "l").currentline + 4
    local err = failure(function()
      local s = given(reminder, { { event_type = "open", id = "a" } })
      for _ = 1, 2 do
        s:when { event_type = "ping" }
          -- a comment inside the chain
          :expect { { command_type = "pinged", id = "a", n = 1 } }  -- the second time round, n = 2
      end
    end)
    assert.equal("spec/testing_spec.lua:" .. (first_line + 2) .. ":", err:match("^[^ ]+"))
  end)

  it("fails without a position when called from C", function()
    local s = given(reminder, {}):when { event_type = "open", id = "a" }
    local ok, err = pcall(s.expect, s, {})
    assert.is_false(ok)
    assert.matches("^commands differ", tostring(err))
  end)

  it("counts as a failure in busted (not an error), at the expectation's line", function()
    local fixture = "spec/fixtures/failing_expectations.lua"
    local p = assert(io.popen("busted --lua=lua5.4 --output=plainTerminal " .. fixture .. " 2>&1"))
    local out = p:read("a")
    p:close()
    assert.matches("0 successes / 2 failures / 0 errors", out, 1, true)
    for _, line in ipairs(marked_lines(fixture)) do
      assert.matches(fixture .. ":" .. line .. ": ", out, 1, true)
    end
  end)

  it("fails when an error was expected and commands came, and the other way round", function()
    assert.matches("expected an error containing \"nope\", but the flow returned:\n{ command_type = \"hello\", id = \"a\" }",
                   failure(function() given(reminder, {}):when { event_type = "open", id = "a" }:expect_error("nope") end),
                   1, true)
    assert.matches("expected commands, but the flow raised: reminder/a: workflow has no handler for event type 'nope'",
                   failure(function() given(reminder, {}):when { event_type = "nope", id = "a" }:expect {} end), 1, true)
    assert.matches('expected an error containing "zzz", got: reminder/a: workflow has no handler',
                   failure(function() given(reminder, {}):when { event_type = "nope", id = "a" }:expect_error("zzz") end),
                   1, true)
  end)

  it("reports a given event that fails, by its position", function()
    assert.error_matches(function()
      given(reminder, { { event_type = "open", id = "a" }, { event_type = "nope", id = "a" } })
    end, "procman.testing: given event #2 %(nope%) failed: reminder/a: workflow has no handler")
    assert.error_matches(function() given({}, {}) end, "given needs a workflow, got table")
  end)
end)
