-- procman.testing: given / when / then, checking only inputs and outputs.
local procman = require "procman"
local given = require("procman.testing").given

local reminder = assert(procman.load("spec/fixtures/reminder.lua"))

local function failure(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "the expectation passed")
  return err
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
