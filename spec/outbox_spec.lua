-- procman.outbox: pending commands as one buffer of encoded envelopes with
-- a slot each (csrc/outbox.c), against a plain Lua list doing the same.
local procman = require "procman"
local core = require "procman.core"
local outbox = require "procman.outbox"
local batch = require "procman.workflows.batch"

local function envelope(n)
  return { id = "w/f" .. n .. "/1/1", workflow = "w", flow = "f" .. n,
           command = { command_type = "c", n = n, text = string.rep("x", n % 7) } }
end

-- The outbox holds what the model (a list of envelopes) holds, in order.
local function agrees(box, model)
  assert.equal(#model, box:size())
  assert.same(model, box:list())
  local bytes = box:encoded()
  for i, e in ipairs(model) do assert.equal(core.encode(e), bytes[i]) end
  for _, e in ipairs(model) do assert.is_true(box:has(e.id)) end
end

local function remove(model, id)
  for i, e in ipairs(model) do
    if e.id == id then return table.remove(model, i) end
  end
end

describe("procman.outbox", function()
  it("keeps order and content through pushes, acks in any order and dispatches", function()
    -- long enough for the dead front to be moved down many times, the
    -- outbox to empty and fill again, and the index to be made and dropped
    math.randomseed(11)
    local box, model, n = outbox.new(), {}, 0
    for step = 1, 4000 do
      local r = math.random(10)
      if r <= 5 or #model == 0 then
        n = n + 1
        box:add(envelope(n))
        model[#model + 1] = envelope(n)
      elseif r <= 8 then  -- an ack, mostly near the front
        local e = model[math.min(#model, math.random(3) == 1 and math.random(#model) or 1)]
        box:forget(e.id)
        remove(model, e.id)
      elseif r == 9 then  -- a dispatch stopped by the gateway's error after k commands
        local k, seen, before = math.random(0, #model), 0, #model
        local count, err = box:dispatch(function(command, env)
          if seen == k then error("gateway down", 0) end
          seen = seen + 1
          assert.same(model[1], env)
          assert.equal(env.command, command)
        end, function(id, pending)
          assert.is_true(pending)
          box:forget(id)
          remove(model, id)
          return true
        end)
        assert.equal(k, count)
        assert.equal(k < before and "gateway down" or nil, err)
      else
        assert.is_false(box:has("w/none/1/1"))
      end
      if step % 97 == 0 then agrees(box, model) end
    end
    agrees(box, model)
  end)

  it("moves its storage down once the acked front is half of it", function()
    local box, model = outbox.new(), {}
    for n = 1, 200 do
      box:add(envelope(n))
      model[n] = envelope(n)
    end
    box:has("w/f1/1/1")  -- the index is made, then kept through the move
    for n = 1, 150 do
      box:forget("w/f" .. n .. "/1/1")
      table.remove(model, 1)
    end
    box:forget("w/f170/1/1")  -- a hole behind the front
    remove(model, "w/f170/1/1")
    for n = 201, 260 do  -- the first push moves the 50 left down
      box:add(envelope(n))
      model[#model + 1] = envelope(n)
    end
    agrees(box, model)
    box:forget("w/f180/1/1")
    remove(model, "w/f180/1/1")
    agrees(box, model)
  end)

  it("refuses to forget an unknown id, and changes nothing", function()
    local box = outbox.new()
    box:add(envelope(1))
    box:add(envelope(2))
    assert.has_error(function() box:forget("w/f3/1/1") end,
                     "procman.outbox: no pending command with id w/f3/1/1")
    box:forget("w/f2/1/1")
    assert.has_error(function() box:forget("w/f2/1/1") end)
    agrees(box, { envelope(1) })
    local empty = outbox.new()
    assert.has_error(function() empty:forget("w/f1/1/1") end)
    assert.is_false(empty:has("w/f1/1/1"))
  end)

  it("passes over what fn acked, and leaves what fn emitted for the next dispatch", function()
    local box = outbox.new()
    for n = 1, 4 do box:add(envelope(n)) end
    local seen = {}
    local count = box:dispatch(function(_, env)
      seen[#seen + 1] = env.id
      if env.id == "w/f1/1/1" then
        box:forget("w/f3/1/1")  -- acked by the gateway meanwhile
        box:add(envelope(5))    -- emitted meanwhile (fn handled an event)
      end
    end, function(id, pending)
      if pending then box:forget(id) end
      return true
    end)
    assert.same({ "w/f1/1/1", "w/f2/1/1", "w/f4/1/1" }, seen)
    assert.equal(3, count)
    agrees(box, { envelope(5) })
  end)

  it("never meets a command emitted after fn emptied the outbox", function()
    local box = outbox.new()
    box:add(envelope(1))
    box:add(envelope(2))
    local seen = {}
    box:dispatch(function(_, env)
      seen[#seen + 1] = env.id
      if env.id == "w/f1/1/1" then
        box:forget("w/f1/1/1")
        box:forget("w/f2/1/1")  -- empty: its storage may start again
        box:add(envelope(3))
        box:add(envelope(4))
      end
    end, function() return true end)
    assert.same({ "w/f1/1/1" }, seen)
    agrees(box, { envelope(3), envelope(4) })
  end)

  it("keeps deferred envelopes as tables until undefer encodes them in order", function()
    local box = outbox.new()
    box:defer()
    assert.is_true(box:deferring())
    box:add(envelope(1))
    box:emit("w", "f2", 1, { { command_type = "c", n = 2 } })
    box:emit("w", "f3", 1, { { command_type = "c", n = 3 } })
    box:add(envelope(4))
    box:emit("w", "f5", 1, { { command_type = "c", n = 5 } })
    assert.is_true(box:has("w/f2/1/1"))
    box:forget("w/f3/1/1")  -- acked further on in the journal: never encoded
    box:forget("w/f1/1/1")
    box:undefer()
    assert.is_false(box:deferring())
    local function made(n)
      return { id = "w/f" .. n .. "/1/1", workflow = "w", flow = "f" .. n,
               command = { command_type = "c", n = n } }
    end
    agrees(box, { made(2), envelope(4), made(5) })
  end)

  it("undefer that cannot encode an envelope raises, the outbox as it was", function()
    local box = outbox.new()
    box:defer()
    box:add(envelope(1))
    box:emit("w", "f2", 1, { { command_type = "c", bad = print } })
    assert.has_error(function() box:undefer() end)
    assert.is_true(box:deferring())
    assert.equal(2, box:size())
    box:forget("w/f2/1/1")
    box:undefer()
    agrees(box, { envelope(1) })
  end)

  it("a step taken back leaves no command behind, with or without an index by id", function()
    local w = procman.workflow {
      name = "w", correlate = "id", starts = { "go" },
      on = { go = function(_, e)
        return { { command_type = "first" }, { command_type = "second", bad = e.bad } }
      end },
    }
    local r = procman.router { workflows = { w } }
    r:handle { event_type = "go", id = 1 }
    for _, indexed in ipairs { false, true } do
      if indexed then assert.is_true(r.outbox:has("w/1/1/1")) end  -- the index is made
      -- the second command is not data: the step is taken back after the
      -- first envelope was staged (and, with the index, entered in it)
      assert.has_error(function() r:handle { event_type = "go", id = 2, bad = print } end)
      assert.is_false(r.outbox:has("w/2/1/1"))
      assert.same({ "w/1/1/1", "w/1/1/2" }, { r:pending()[1].id, r:pending()[2].id })
      assert.equal(2, r:stats().pending)
    end
    r:handle { event_type = "go", id = 2 }
    assert.is_true(r.outbox:has("w/2/1/1"))
    local seen = {}
    assert.equal(4, r:dispatch(function(c, e) seen[#seen + 1] = e.id .. ":" .. c.command_type end))
    assert.same({ "w/1/1/1:first", "w/1/1/2:second", "w/2/1/1:first", "w/2/1/2:second" }, seen)
  end)

  it("keeps a pending command as its bytes and a slot, no Lua object", function()
    local r = procman.router { workflows = { batch } }
    local names = {}
    for i = 1, 3000 do names[i] = "f" .. i end
    for b = 1, 10 do r:handle { event_type = "batch_created", batch_id = "b" .. b, files = names } end
    collectgarbage()
    collectgarbage()
    local full = collectgarbage("count")
    assert.equal(30000, r:dispatch(function() end))
    collectgarbage()
    collectgarbage()
    -- an envelope here is ~90 bytes, its slot 16; as a string with its id beside it in
    -- Lua tables, a pending command was ~230 bytes
    assert.is_true((full - collectgarbage("count")) * 1024 / 30000 < 180)
  end)
end)
