-- Errors that say what was wrong and what to do, with the value's type
-- where it matters (issue 15, item 3).
local procman = require "procman"
local batch = require "procman.workflows.batch"
local json = require "procman.cli.json"
local files = require "spec.support.files"

local provisioning = procman.workflow {
  name = "provisioning", correlate = "id", starts = { "created" },
  init = function(id) return { id = id, status = "new" } end,
  on = { created = function() end, mailbox_created = function() end,
         one_command = function() return { command_type = "send_mail" } end },
}

local function refusal(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "it was accepted")
  return tostring(err)
end

local procman_cmd = require "spec.support.procman_cmd"

describe("error messages", function()
  it("show ids of different types distinctly: 7 is not \"7\"", function()
    local r = procman.router { workflows = { provisioning } }
    r:handle { event_type = "created", id = "7" }
    assert.equal('procman.router: no flow provisioning/7 for mailbox_created: the event\'s flow id is 7 '
                 .. '(an integer), but there is a flow "7" (a string); ids of different types are different '
                 .. "flows: send the id as the flow has it",
                 refusal(r.handle, r, { event_type = "mailbox_created", id = 7 }))
    r:handle { event_type = "created", id = 8 }
    assert.matches('flow id is "8" (a string), but there is a flow 8 (an integer)',
                   refusal(r.handle, r, { event_type = "mailbox_created", id = "8" }), 1, true)
    assert.equal("procman.router: no flow provisioning/9 for mailbox_created",
                 refusal(r.handle, r, { event_type = "mailbox_created", id = 9 }))
    local pm = provisioning:new("7")
    assert.equal("provisioning/7: event 'created' belongs to flow '7' (event.id), not to this one; ids of "
                 .. "different types are different flows: the event's is a number, this flow's a string",
                 refusal(pm.handle, pm, { event_type = "created", id = 7 }))
    assert.equal("provisioning/7: event 'created' belongs to flow '8' (event.id), not to this one",
                 refusal(pm.handle, pm, { event_type = "created", id = "8" }))
  end)

  it("say when a handler returned one command instead of a list", function()
    local pm = provisioning:new("a")
    pm:handle { event_type = "created" }
    assert.equal("provisioning/a: handler for 'one_command' returned one command (command_type 'send_mail') "
                 .. "where a list of commands is needed: return { command }",
                 refusal(pm.handle, pm, { event_type = "one_command" }))
    assert.equal(1, pm:version())
  end)

  it("show a bad flow id with its type, and what to do", function()
    local r = procman.router { workflows = { provisioning } }
    assert.equal("procman.router: event 'created': flow id for workflow \"provisioning\" must be a non-empty "
                 .. "string or an integer, got 1.5 (a float): send an integer, or the id as a string",
                 refusal(r.handle, r, { event_type = "created", id = 1.5 }))
    assert.matches('got "" (an empty string): the event must name its flow',
                   refusal(r.handle, r, { event_type = "created", id = "" }), 1, true)
    assert.matches("got a table", refusal(r.handle, r, { event_type = "created", id = {} }), 1, true)
    assert.matches("bad argument #2 to 'new' (non-empty string or integer flow id expected, got the float 1.5: "
                   .. "pass an integer, or the id as a string)", refusal(provisioning.new, provisioning, 1.5), 1, true)
    assert.matches("flow id expected, got an empty string)", refusal(provisioning.new, provisioning, ""), 1, true)
  end)

  it("put lua-cjson's errors in plain words, with the position", function()
    local cases = {
      ['{"a":1,}'] = "not JSON: expected a key (a string in double quotes), found '}' at character 8",
      ['{"a" 1}'] = "not JSON: expected ':', found a number at character 6",
      ['[1,2'] = "not JSON: expected ',' or ']', found the end of the line at character 5",
      ['{"a":1 "b":2}'] = "not JSON: expected ',' or '}', found a string at character 8",
      ['nope'] = "not JSON: expected a value, found something that is not JSON at character 1",
    }
    for line, says in pairs(cases) do
      local event, why = json.decode_event(line)
      assert.is_nil(event)
      assert.equal(says, why)
    end
  end)

  it("suggest the router option that was meant, as workflow fields do", function()
    assert.matches("unknown option jounral (did you mean 'journal'?); the options are clock, hooks, journal,",
                   refusal(procman.router, { workflows = { batch }, jounral = "x" }), 1, true)
  end)

  it("say that a directory is not a journal", function()
    local dir = files.temp_path()
    os.execute("mkdir " .. dir)
    local r = procman_cmd("inspect " .. dir)
    os.execute("rmdir " .. dir)
    assert.equal(1, r.code)
    assert.equal("procman inspect: " .. dir .. ": is a directory, not a journal: name the journal file "
                 .. "(Is a directory)\n", r.err)
  end)

  describe("of procman inspect", function()
    local path = files.temp_path()
    local two = files.temp_path()
    setup(function()
      local r = assert(procman.router { workflows = { batch }, journal = path, on_error = "park" })
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:handle { event_type = "batch_created", batch_id = "b2", files = 5 }  -- fails: parked, never started
      r:close()
      r = assert(procman.router { workflows = { batch, provisioning }, journal = two })
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:handle { event_type = "created", id = "p" }
      r:close()
    end)
    teardown(function()
      os.remove(path)
      os.remove(two)
    end)

    it("show a parked flow that never started as not started", function()
      local r = procman_cmd("inspect " .. path .. " --workflow batch")
      assert.equal(0, r.code)
      assert.matches("\nb2 +%(not started%) +0 +v1  parked\n", r.out)
      r = procman_cmd("inspect " .. path .. " --flow b2")
      assert.matches("^batch/b2: %(not started%), version 0 %(parked%)", r.out)
    end)

    it("apply --status to the only workflow, and ask which when there are several", function()
      local r = procman_cmd("inspect " .. path .. " --status created")
      assert.equal(0, r.code)
      assert.matches("\nb1 +created +1 +v1  live\n$", r.out)
      r = procman_cmd("inspect " .. two .. " --status created")
      assert.equal(2, r.code)
      assert.equal("procman inspect: --status created needs --workflow W to say whose flows (this journal "
                   .. "has the workflows batch, provisioning)\n", r.err)
      r = procman_cmd("inspect " .. two .. " --flow b1 --status created")
      assert.equal(2, r.code)
      assert.matches("--status filters the list of a workflow's flows", r.err, 1, true)
    end)
  end)

  it("name the process that holds a journal's lock", function()
    local path = files.temp_path()
    local ready = path .. ".ready"
    local script = path .. ".lua"
    files.write(script, string.format([[
      local procman = require "procman"
      local r = assert(procman.router { workflows = { (require "procman.workflows.batch") }, journal = %q })
      io.open(%q, "w"):close()
      io.read("a")
      r:close()
    ]], path, ready))
    local child = assert(io.popen(string.format("LUA_PATH=%q LUA_CPATH=%q sh -c 'echo $$ >%s.pid; exec lua5.4 %s'",
                                                package.path, package.cpath, path, script), "w"))
    for _ = 1, 600 do  -- a guard against a hang, not a time limit on the test
      if io.open(ready) then break end
      os.execute("sleep 0.05")
    end
    local pid = files.bytes(path .. ".pid"):match("%d+")
    local r, err = procman.router { workflows = { batch }, journal = path }
    child:close()
    for _, p in ipairs { path, ready, path .. ".pid", script } do os.remove(p) end
    assert.is_nil(r)
    assert.matches("the journal is in use by another process: pid " .. pid .. " holds its lock", err, 1, true)
    local mine = assert(procman.router { workflows = { batch }, journal = path })
    r, err = procman.router { workflows = { batch }, journal = path }
    mine:close()
    os.remove(path)
    assert.is_nil(r)
    assert.matches("the journal is in use by another router of this process (pid ", err, 1, true)
    assert.matches("): close that one first", err, 1, true)
  end)
end)
