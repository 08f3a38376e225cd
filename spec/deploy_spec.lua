-- The deploy procedure of docs/operations.md, end to end, each step a new
-- lua5.4 process on the same journal (the restarts a deploy makes):
--   write v2 -> procman verify says which live flows v2 diverges on ->
--   run with both versions (or with a patch) -> retire v1 when procman
--   inspect shows no live flow on it.
local cjson = require "cjson"
local files = require "spec.support.files"

local procman_cmd = require "spec.support.procman_cmd"

local function json_lines(...)
  local out = {}
  for i, event in ipairs { ... } do out[i] = cjson.encode(event) end
  return table.concat(out, "\n") .. "\n"
end

-- The commands a run wrote, as "flow:command_type".
local function sent(out)
  local list = {}
  for line in out:gmatch("[^\n]+") do
    local e = cjson.decode(line)
    list[#list + 1] = e.flow .. ":" .. e.command.command_type
  end
  return list
end

-- A user-provisioning workflow file. v1: a mailbox and an account; v2
-- also a calendar (a changed handler: old flows would diverge on it).
local PROVISIONING = [[
return procman.workflow {
  name = "provisioning", version = %d, correlate = "user_id", starts = { "user_registered" },
  init = function(id) return { id = id, pending = {} } end,
  on = {
    user_registered = function(state)
      local out = {}
      for _, thing in pairs { %s } do  -- (pairs: a patch may leave a hole)
        state.pending[thing] = true
        out[#out + 1] = { command_type = "create_" .. thing, user_id = state.id }
      end
      return out
    end,
    created = function(state, event)
      state.pending[event.thing] = nil
      %s
    end,
  },
  done = function(state) return next(state.pending) == nil end,
}
]]

local function provisioning(version, things, on_created)
  return PROVISIONING:format(version, things, on_created or "")
end

local function registered(id) return { event_type = "user_registered", user_id = id } end
local function created(id, thing) return { event_type = "created", user_id = id, thing = thing } end

describe("deploying new workflow code to live flows", function()
  local dir, journal
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    journal = dir .. "/flows.pmj"
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function write(name, source)
    files.write(dir .. "/" .. name, source)
    return dir .. "/" .. name
  end

  it("with a second version: verify, run both, retire v1", function()
    local v1 = write("prov_v1.lua", provisioning(1, '"mailbox", "account"'))
    local r = procman_cmd("run -q " .. v1 .. " --journal " .. journal,
                          json_lines(registered("u1"), registered("u2"), created("u2", "mailbox"),
                                     registered("u3"), created("u3", "mailbox"), created("u3", "account")))
    assert.equal(0, r.code, r.err)

    -- write v2, and ask which live flows it would diverge on
    local v2 = write("prov_v2.lua", provisioning(2, '"mailbox", "account", "calendar"'))
    r = procman_cmd("verify --live " .. journal .. " " .. v2)
    assert.equal(1, r.code)
    assert.matches("live flows that diverge: provisioning/u1, provisioning/u2\n", r.out, 1, true)
    assert.not_matches("provisioning/u3", r.out, 1, true)  -- completed: no concern of a deploy
    assert.matches(": 3 events replayed, 2 divergences\n$", r.out)
    -- with both versions each flow is checked on its own code: nothing diverges
    r = procman_cmd("verify --live " .. journal .. " " .. v1 .. " " .. v2)
    assert.equal(0, r.code, r.out)
    assert.matches(": 3 events replayed, 0 divergences\n$", r.out)
    -- v2 alone cannot open the journal: its live flows run v1
    r = procman_cmd("run -q " .. v2 .. " --journal " .. journal, "")
    assert.equal(1, r.code)
    assert.matches('2 live flows of workflow "provisioning" on version 1', r.err, 1, true)
    -- both versions: the old flows keep v1, a new one starts on v2
    r = procman_cmd("run -q " .. v1 .. " " .. v2 .. " --journal " .. journal,
                    json_lines(registered("u4"), created("u1", "mailbox"), created("u1", "account"),
                               created("u2", "account")))
    assert.equal(0, r.code, r.err)
    assert.same({ "u4:create_mailbox", "u4:create_account", "u4:create_calendar" }, sent(r.out))
    -- inspect: no live flow on v1 any more
    r = procman_cmd("inspect --json " .. journal)
    local summary = cjson.decode(r.out).workflows.provisioning
    assert.same({ v2 = 1 }, summary.live_by_version)
    assert.equal(3, summary.completed)
    r = procman_cmd("inspect " .. journal)
    assert.matches("    live flows by version: v2 1\n", r.out, 1, true)
    -- retire v1: v2 alone runs the journal, and the flow on v2 goes on
    r = procman_cmd("run -q " .. v2 .. " --journal " .. journal,
                    json_lines(created("u4", "mailbox"), created("u4", "account"), created("u4", "calendar")))
    assert.equal(0, r.code, r.err)
    r = procman_cmd("inspect --json " .. journal)
    assert.equal(4, cjson.decode(r.out).workflows.provisioning.completed)
  end)

  it("with a patch: old flows replay their past and take the new path for new events", function()
    local v1 = write("prov.lua", provisioning(1, '"mailbox", "account"'))
    local r = procman_cmd("run -q " .. v1 .. " --journal " .. journal, json_lines(registered("u1")))
    assert.equal(0, r.code, r.err)
    -- the same version, patched: a calendar for new flows, a welcome once an account exists
    local patched = write("prov.lua", provisioning(1,
      'procman.patched("calendar") and "calendar" or nil, "mailbox", "account"',
      'if event.thing == "account" and procman.patched("welcome") then '
        .. 'return { { command_type = "welcome", user_id = state.id } } end'))
    r = procman_cmd("verify " .. journal .. " " .. patched)
    assert.equal(0, r.code, r.out)
    assert.matches("0 divergences", r.out, 1, true)
    r = procman_cmd("run -q " .. patched .. " --journal " .. journal,
                    json_lines(registered("u5"), created("u1", "account")))
    assert.equal(0, r.code, r.err)
    assert.same({ "u5:create_calendar", "u5:create_mailbox", "u5:create_account", "u1:welcome" }, sent(r.out))
    r = procman_cmd("inspect " .. journal)
    assert.matches("patch calendar: taken by 1 of 2 live flows", r.out, 1, true)
    assert.matches("patch welcome: taken by 1 of 2 live flows", r.out, 1, true)
    -- a restart replays both flows with the patches where the journal has
    -- them (u1: not at its start, from its welcome on): no divergence
    r = procman_cmd("run -q " .. patched .. " --journal " .. journal,
                    json_lines(created("u1", "mailbox"), created("u5", "calendar"), created("u5", "mailbox"),
                               created("u5", "account")))
    assert.equal(0, r.code, r.err)
    assert.same({ "u5:welcome" }, sent(r.out))
    r = procman_cmd("inspect --json " .. journal)
    assert.equal(2, cjson.decode(r.out).workflows.provisioning.completed)
  end)
end)
