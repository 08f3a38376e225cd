-- procman.router: routing, atomicity, the outbox, the journal and recovery.
local procman = require "procman"
local batch = require "procman.workflows.batch"
local order = require "procman.workflows.order"

local files = require "spec.support.files"
local temp_path, file_bytes, write_bytes = files.temp_path, files.bytes, files.write

local routers = require "spec.support.routers"
local snapshot, refuses = routers.snapshot, routers.refuses

describe("procman.router", function()
  describe("depth", function()
    local deep = procman.workflow { name = "deep", correlate = "id", starts = { "x" },
                                    on = { x = function(state, event) state.last = event.v end } }
    local function nested(depth)  -- an event 'depth' tables deep
      local v = {}
      for _ = 1, depth - 2 do v = { v } end
      return { event_type = "x", id = 1, v = v }
    end

    it("takes events nested 99 deep, and refuses deeper ones, changing nothing", function()
      local r = procman.router { workflows = { deep } }
      refuses(r, nested(100), "procman.router: event 'x' is not data: procman.encode: cannot encode "
                              .. "tables nested more than 100 deep")
      assert.same({}, r:handle(nested(99)))
      assert.equal(1, r:flow("deep", 1):version())
    end)
  end)

  describe("routing", function()
    it("starts flows, routes by correlation id, and returns envelopes", function()
      local r = procman.router { workflows = { batch, order } }
      assert.same({
        { id = "batch/b7/1/1", workflow = "batch", flow = "b7", command = { command_type = "process_file", file = "a" } },
        { id = "batch/b7/1/2", workflow = "batch", flow = "b7", command = { command_type = "process_file", file = "b" } },
      }, r:handle { event_type = "batch_created", batch_id = "b7", files = { "a", "b" } })
      assert.same({}, r:handle { event_type = "file_processed", batch_id = "b7", file = { id = "a", status = "success" } })
      assert.equal("pending", r:flow("batch", "b7"):status())
      assert.is_nil(r:flow("batch", "nope"))
      assert.same({}, r:handle { event_type = "no_one_handles_this" })
      assert.equal("procman.router (1 live, 0 completed, 2 pending)", tostring(r))
    end)

    it("completes flows, and refuses late events for them", function()
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "error" } }
      assert.is_nil(r:flow("batch", "b1"))
      assert.equal("error", r:completed("batch", "b1"))
      assert.is_nil(r:completed("batch", "b2"))
      refuses(r, { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } },
              "procman.router: flow batch/b1 is complete (error): event 'file_processed' came after it finished")
      refuses(r, { event_type = "batch_created", batch_id = "b1", files = { "z" } }, "flow batch/b1 is complete")
      assert.same({ live = 0, completed = 1, pending = 1, parked = 0, timers = 0, dead_letters = 0,
                    journal_bytes = 0, recovered = 0, dropped = 0, seq = 2 },
                  r:stats())
    end)

    it("returns {} for a redelivery to a completed flow, until compaction", function()
      local path = temp_path()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" }, event_id = "c1" }
      local last = { event_type = "file_processed", batch_id = "b1", event_id = "p1", file = { id = "a", status = "success" } }
      r:handle(last)
      assert.equal("success", r:completed("batch", "b1"))
      local bytes = r:stats().journal_bytes
      assert.same({}, r:handle(last))
      assert.same({}, r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" }, event_id = "c1" })
      assert.equal(bytes, r:stats().journal_bytes)
      refuses(r, { event_type = "file_processed", batch_id = "b1", event_id = "p2", file = { id = "a", status = "error" } },
              "flow batch/b1 is complete (success)")
      r:close()
      r = procman.router { workflows = { batch }, journal = path }  -- remembered across a restart
      assert.same({}, r:handle(last))
      assert(r:compact())  -- compaction lets the ids go, now and after a restart
      refuses(r, last, "flow batch/b1 is complete (success)")
      r:close()
      r = procman.router { workflows = { batch }, journal = path }
      refuses(r, last, "flow batch/b1 is complete (success)")
      assert.equal("success", r:completed("batch", "b1"))
      r:close()
      os.remove(path)
    end)

    it("refuses events it cannot route, changing nothing", function()
      local r = procman.router { workflows = { batch, order } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      refuses(r, { event_type = "file_processed", batch_id = "b9", file = { id = "a", status = "success" } },
              "procman.router: no flow batch/b9 for file_processed")
      refuses(r, { event_type = "file_processed", file = { id = "a", status = "success" } },
              "procman.router: event 'file_processed' lacks the field batch_id, which workflow \"batch\" needs")
      refuses(r, { event_type = "batch_created", batch_id = {}, files = {} }, "must be a non-empty string or an integer")
      refuses(r, "x", "procman.router: event must be a table, got string")
      refuses(r, {}, "procman.router: event.event_type must be a non-empty string, got nil")
      refuses(r, { event_type = "file_processed", batch_id = "b1", file = { id = "zz", status = "success" } },
              'batch/b1: handler for \'file_processed\' failed: file "zz" is not in this batch')
    end)

    it("is atomic across workflows: one failing flow undoes the others", function()
      local seen = procman.workflow { name = "audit", correlate = "batch_id", starts = { "file_processed" },
                                      on = { file_processed = function(state) state.n = (state.n or 0) + 1
                                                                return { { command_type = "log" } } end } }
      local r = procman.router { workflows = { seen, batch }, journal = temp_path() }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      -- audit/b1 would start and handle it; batch/b1 refuses it: neither changes
      refuses(r, { event_type = "file_processed", batch_id = "b1", file = { id = "zz", status = "success" } },
              "not in this batch")
      assert.is_nil(r:flow("audit", "b1"))
      -- a live audit flow is taken back too
      r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" }, event_id = "e1" }
      r:handle { event_type = "batch_created", batch_id = "b2", files = { "a" } }
      local audit = r:flow("audit", "b1")
      assert.equal(1, audit:version())
      refuses(r, { event_type = "file_processed", batch_id = "b2", file = { id = "zz", status = "success" } },
              "not in this batch")
      r:close()
    end)

    it("refuses commands that are not data, changing nothing", function()
      local bad = procman.workflow { name = "bad", correlate = "id", starts = { "go" },
                                     on = { go = function() return { { command_type = "x", f = print } } end } }
      local r = procman.router { workflows = { bad } }
      refuses(r, { event_type = "go", id = 1 }, "a handler returned commands that are not data")
    end)
  end)

  describe("the outbox", function()
    it("keeps commands pending in order until acked", function()
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b", "c" } }
      local ids = {}
      for i, e in ipairs(r:pending()) do ids[i] = e.id end
      assert.same({ "batch/b1/1/1", "batch/b1/1/2", "batch/b1/1/3" }, ids)
      assert.is_true(r:ack("batch/b1/1/2"))
      assert.same({ "batch/b1/1/1", "batch/b1/1/3" }, { r:pending()[1].id, r:pending()[2].id })
      assert.has_error(function() r:ack("batch/b1/1/2") end, "procman.router: no pending command with id batch/b1/1/2")
      r:pending()[1].command.file = "changed"  -- copies
      assert.equal("a", r:pending()[1].command.file)
    end)

    it("keeps its order when commands are acked from the front and more arrive", function()
      local r = procman.router { workflows = { batch } }
      local expected = {}
      local function add(from, to)
        for i = from, to do
          r:handle { event_type = "batch_created", batch_id = "b" .. i, files = { "a", "b" } }
          expected[#expected + 1] = "batch/b" .. i .. "/1/1"
          expected[#expected + 1] = "batch/b" .. i .. "/1/2"
        end
      end
      add(1, 500)
      for _ = 1, 990 do r:ack(table.remove(expected, 1)) end  -- most of the front goes
      add(501, 700)  -- and the queue grows again (its table is rehashed)
      local ids = {}
      for k, e in ipairs(r:pending()) do ids[k] = e.id end
      assert.same(expected, ids)
      assert.equal(#expected, r:stats().pending)
    end)

    it("keeps its own copy of each command", function()
      local kept
      local sneaky = procman.workflow { name = "sneaky", correlate = "id", starts = { "go", "again" }, on = {
        go = function(state)
          kept = { command_type = "pay", amount = 10 }
          state.n = 1
          return { kept }
        end,
        again = function(state)
          kept.amount = 1000000  -- a handler changing a command it returned earlier
          state.n = 2
        end,
      } }
      local r = procman.router { workflows = { sneaky } }
      r:handle { event_type = "go", id = 1 }
      r:handle { event_type = "again", id = 1 }
      assert.equal(10, r:pending()[1].command.amount)
    end)

    it("dispatches in order, acks each sent, stops at the first error", function()
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b", "c" } }
      local sent = {}
      local count, err = r:dispatch(function(command, envelope)
        if command.file == "b" then error("gateway down", 0) end
        sent[#sent + 1] = envelope.id
      end)
      assert.equal(1, count)
      assert.equal("gateway down", err)
      assert.same({ "batch/b1/1/1" }, sent)
      assert.equal(2, #r:pending())
      assert.equal(2, r:dispatch(function() end))
      assert.equal(0, #r:pending())
    end)

    -- A router with b1's three commands, dispatched: the ids sent, the
    -- count, the router. at_a(r) runs while the first one is sent.
    local function dispatch_b1(at_a)
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b", "c" } }
      local sent = {}
      local count = r:dispatch(function(command, envelope)
        sent[#sent + 1] = envelope.id
        if command.file == "a" then at_a(r) end
      end)
      return sent, count, r
    end

    it("dispatch passes over a command its function acked, and leaves those emitted meanwhile", function()
      local sent, count, r = dispatch_b1(function(r)
        assert(r:ack("batch/b1/1/3"))  -- the gateway answered for c already
        r:handle { event_type = "batch_created", batch_id = "b2", files = { "x" } }
      end)
      assert.same({ "batch/b1/1/1", "batch/b1/1/2" }, sent)
      assert.equal(2, count)
      assert.same({ "batch/b2/1/1" }, { r:pending()[1].id })
    end)

    it("dispatch goes on right when its function empties the outbox and emits anew", function()
      local sent, count, r = dispatch_b1(function(r)  -- acks all three: the outbox empties (new tables)...
        for _, id in ipairs { "batch/b1/1/1", "batch/b1/1/2", "batch/b1/1/3" } do assert(r:ack(id)) end
        assert.equal(0, r:stats().pending)
        -- ... then gets new commands, in the places the acked ones had
        r:handle { event_type = "batch_created", batch_id = "b2", files = { "x", "y", "z" } }
      end)
      assert.same({ "batch/b1/1/1" }, sent)
      assert.equal(1, count)
      assert.equal(3, r:dispatch(function(_, envelope) sent[#sent + 1] = envelope.id end))
      assert.same({ "batch/b1/1/1", "batch/b2/1/1", "batch/b2/1/2", "batch/b2/1/3" }, sent)
      assert.equal(0, r:stats().pending)
    end)

    it("dispatch hands out fresh copies: what fn changes does not reach the outbox", function()
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      local err = select(2, r:dispatch(function(command, envelope)
        command.file, envelope.id = "changed", "changed"
        error("gateway down", 0)
      end))
      assert.equal("gateway down", err)
      assert.same({ { id = "batch/b1/1/1", workflow = "batch", flow = "b1",
                      command = { command_type = "process_file", file = "a" } } }, r:pending())
    end)

    it("dispatch stops when its function closed the router", function()
      local r = procman.router { workflows = { batch } }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
      assert.has_error(function() r:dispatch(function() r:close() end) end,
                       "procman.router: this router is closed")
    end)

    it("gives back the outbox's memory once r:dispatch sent every command", function()
      local r = procman.router { workflows = { batch } }
      local names = {}
      for i = 1, 3000 do names[i] = "f" .. i end
      r:handle { event_type = "batch_created", batch_id = "b1", files = names }
      collectgarbage()
      collectgarbage()
      local full = collectgarbage("count")
      assert.equal(3000, r:dispatch(function() end))
      collectgarbage()
      collectgarbage()
      -- 3000 pending commands are ~300 KB; their emptied slots would be ~100 KB
      assert.is_true((full - collectgarbage("count")) * 1024 > 250000)
      assert.equal(0, r.outbox:size())
      r:handle { event_type = "batch_created", batch_id = "b2", files = { "x" } }
      assert.same({ "batch/b2/1/1" }, { r:pending()[1].id })
      assert.equal(1, r:dispatch(function() end))
    end)

    it("gives back the outbox's memory once every command is acked", function()
      local box = require("procman.outbox").new()
      for i = 1, 3000 do box:add({ id = "w/1/1/" .. i, workflow = "w", flow = 1, command = {} }) end
      for i = 1, 3000 do box:forget("w/1/1/" .. i) end
      collectgarbage()
      collectgarbage()
      local before = collectgarbage("count")
      box = nil  -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      -- an empty outbox is a few small tables; 3000 emptied slots would be ~100 KB
      assert.is_true((before - collectgarbage("count")) * 1024 < 2000)
    end)
  end)

  describe("with a journal", function()
    local path
    before_each(function() path = temp_path() end)
    after_each(function() os.remove(path) end)

    -- A random workload of interleaved batch and order flows, with acks.
    local function workload(seed, steps)
      math.randomseed(seed)
      local events, open_batches, open_orders = {}, {}, {}
      for i = 1, steps do
        local r = math.random(6)
        if r == 1 or #open_batches + #open_orders == 0 then
          local id = "b" .. i
          open_batches[#open_batches + 1] = { id = id, files = { "x", "y" }, left = 2 }
          events[#events + 1] = { event_type = "batch_created", batch_id = id, files = { "x", "y" } }
        elseif r == 2 then
          local id = "o" .. i
          open_orders[#open_orders + 1] = { id = id, step = 1 }
          events[#events + 1] = { event_type = "order_created", order_id = id,
                                  items = { { sku = "s" .. i, quantity = i } } }
        elseif r <= 4 and #open_batches > 0 then
          local k = math.random(#open_batches)
          local b = open_batches[k]
          local file = b.left == 2 and "x" or "y"
          b.left = b.left - 1
          events[#events + 1] = { event_type = "file_processed", batch_id = b.id, event_id = "ev" .. i,
                                  file = { id = file, status = math.random() < 0.8 and "success" or "error" } }
          if b.left == 0 then table.remove(open_batches, k) end
        elseif #open_orders > 0 then
          local k = math.random(#open_orders)
          local o = open_orders[k]
          local t = ({ "payment_approved", "order_shipped" })[o.step]
          events[#events + 1] = { event_type = t, order_id = o.id }
          o.step = o.step + 1
          if o.step > 2 then table.remove(open_orders, k) end
        else
          events[#events + 1] = { event_type = "ack_one" }
        end
      end
      return events
    end

    local function run(r, e)
      if e.event_type == "ack_one" then
        local p = r:pending()
        if #p > 0 then assert(r:ack(p[math.random(#p)].id)) end
      else
        assert(r:handle(e))
      end
    end

    it("recovers exactly what an uninterrupted run has, at any cut point", function()
      local events = workload(11, 300)
      local reference = procman.router { workflows = { batch, order } }
      math.randomseed(99)
      for _, e in ipairs(events) do run(reference, e) end
      for _, cut in ipairs({ 1, 17, 150, 299 }) do
        os.remove(path)
        math.randomseed(99)
        local r = procman.router { workflows = { batch, order }, journal = path, sync = "none" }
        for i = 1, cut do run(r, events[i]) end
        r:close()
        r = assert(procman.router { workflows = { batch, order }, journal = path, sync = "batch" })
        for i = cut + 1, #events do run(r, events[i]) end
        assert.same(snapshot(reference), snapshot(r))
        r:close()
      end
    end)

    it("compacts: recovery from a compacted journal gives the same router", function()
      local events = workload(23, 400)
      local reference = procman.router { workflows = { batch, order } }
      math.randomseed(5)
      for _, e in ipairs(events) do run(reference, e) end
      math.randomseed(5)
      local r = procman.router { workflows = { batch, order }, journal = path }
      local sizes = {}
      for i, e in ipairs(events) do
        run(r, e)
        if i % 97 == 0 then
          local before = r:stats().journal_bytes
          assert.is_true(r:compact())
          sizes[#sizes + 1] = { before, r:stats().journal_bytes }
          r:close()
          r = assert(procman.router { workflows = { batch, order }, journal = path })
        end
      end
      assert.same(snapshot(reference, true), snapshot(r, true))
      assert.is_true(sizes[#sizes][2] < sizes[#sizes][1])
      r:close()
      local again = assert(procman.router { workflows = { batch, order }, journal = path })
      assert.same(snapshot(reference, true), snapshot(again, true))
      again:close()
    end)

    it("compacts a router that holds nothing into its counters alone, the same bytes each time", function()
      local r = procman.router { workflows = { batch }, journal = path }
      assert.equal(16, #file_bytes(path))
      assert.is_true(r:compact())
      local once = file_bytes(path)
      assert.equal(16 + 9 + #procman.encode { seq = 0, next_dead_letter = 1 }, #once)  -- 49
      assert.is_true(r:compact())
      assert.equal(once, file_bytes(path))
      r:close()
      r = assert(procman.router { workflows = { batch }, journal = path })
      assert.same({ 0, 0 }, { r:stats().seq, r:stats().live })
      r:close()
    end)

    it("compaction trims the live flows' histories, which it made redundant", function()
      local r = procman.router { workflows = { batch }, journal = path, sync = "none" }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
      r:handle { event_type = "file_processed", batch_id = "b1", event_id = "e1", file = { id = "a", status = "error" } }
      local pm = r:flow("batch", "b1")
      local state = pm:state()
      assert.equal(2, #pm:history())
      assert.is_true(r:compact())
      assert.same({}, pm:history())
      assert.same(state, pm:state())
      assert.equal(2, pm:version())
      assert.same({}, r:handle { event_type = "file_processed", batch_id = "b1", event_id = "e1",
                                 file = { id = "a", status = "error" } })  -- still a redelivery
      r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } }
      assert.equal(1, #pm:history())
      r:close()
    end)

    it("compacts over a stale temporary file, and refuses without a journal", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      write_bytes(path .. ".compact", "left by a crash")
      assert.is_true(r:compact())
      assert.is_nil(io.open(path .. ".compact"))
      assert.equal(1, r:flow("batch", "b1"):version())
      r:close()
      assert.has_error(function() procman.router { workflows = { batch } }:compact() end,
                       "procman.router: compact needs a journal")
    end)

    it("refuses to compact a state deeper than data may be, naming the flow, losing nothing", function()
      local keeper = procman.workflow { name = "keeper", correlate = "id", starts = { "x" },
                                      on = { x = function(state, event) state.a = { b = event } end } }
      local event = { event_type = "x", id = "k" }  -- 99 deep: as deep as the router takes
      local inner = event
      for _ = 2, 99 do inner.n = {}; inner = inner.n end
      local r = procman.router { workflows = { keeper }, journal = path }
      assert.same({}, r:handle(event))               -- the state is now 101 deep
      local bytes, before = file_bytes(path), r:stats()
      assert.error_matches(function() r:compact() end,
                           "^keeper/k: state is not data: cannot encode tables nested more than 100 deep "
                           .. "at state%.a%.b%.n%.n")
      assert.equal(bytes, file_bytes(path))
      assert.same(before, r:stats())
      assert.is_nil(io.open(path .. ".compact"))
      r:close()
      local again = procman.router { workflows = { keeper }, journal = path }
      assert.equal(1, again:flow("keeper", "k"):version())
      again:close()
    end)

    it("remembers event ids across restarts", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
      local e = { event_type = "file_processed", batch_id = "b1", event_id = "e1", file = { id = "a", status = "success" } }
      r:handle(e)
      r:close()
      r = procman.router { workflows = { batch }, journal = path }
      local bytes = r:stats().journal_bytes
      assert.same({}, r:handle(e))
      assert.equal(bytes, r:stats().journal_bytes)
      assert.equal(2, r:flow("batch", "b1"):version())
      r:close()
    end)

    it("keeps every event whose handle returned when killed with SIGKILL", function()
      local child = [[
        package.path = "lua/?.lua;lua/?/init.lua;cli/lua/?.lua;workflows/lua/?.lua;" .. package.path
        package.cpath = "build/?.so;" .. package.cpath
        local procman = require "procman"
        local r = procman.router { workflows = { (require "procman.workflows.batch") },
                                   journal = arg[1], sync = "always" }
        local done = io.open(arg[2], "w")
        for i = 1, 100000 do
          r:handle { event_type = "batch_created", batch_id = "b" .. i, files = { "f" } }
          done:write(i, "\n")
          done:flush()
        end
      ]]
      local script = os.tmpname()
      write_bytes(script, child)
      for _ = 1, 20 do
        os.remove(path)
        local progress = os.tmpname()
        -- kill at a random moment after the first event (waiting at most 10 s for it)
        os.execute(string.format("lua5.4 %s %s %s & pid=$!; i=0; "
                                 .. "while [ ! -s %s ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; "
                                 .. "sleep 0.%02d; kill -9 $pid; wait $pid 2>/dev/null",
                                 script, path, progress, progress, math.random(1, 30)))
        local last = 0
        for line in io.lines(progress) do last = tonumber(line) end
        os.remove(progress)
        assert.is_true(last > 0, "the child handled no event before it was killed")
        local r = assert(procman.router { workflows = { batch }, journal = path })
        local s = r:stats()
        assert.is_true(s.seq >= last, string.format("handled %d, recovered %d", last, s.seq))
        assert.is_true(s.seq <= last + 1)  -- at most the one in flight
        for i = 1, s.seq do assert.is_not_nil(r:flow("batch", "b" .. i)) end
        r:close()
      end
      os.remove(script)
    end)

    it("recovers from a journal cut at every byte of its last records", function()
      local r = procman.router { workflows = { batch }, journal = path }
      local ends = {}
      for i = 1, 3 do
        r:handle { event_type = "batch_created", batch_id = "b" .. i, files = { "a" } }
        ends[i] = r:stats().journal_bytes
      end
      r:ack("batch/b3/1/1")
      ends[4] = r:stats().journal_bytes
      r:close()
      local whole = file_bytes(path)
      for cut = ends[1], #whole do
        write_bytes(path, whole:sub(1, cut))
        local kept = 0
        for i = 1, 4 do if ends[i] <= cut then kept = i end end
        local k = assert(procman.router { workflows = { batch }, journal = path, warn = function() end })
        local s = k:stats()
        assert.equal(math.min(kept, 3), s.seq)
        assert.equal(cut - ends[kept], s.dropped)
        assert.equal(kept == 4 and 2 or kept, s.pending)
        k:close()
      end
    end)

    it("cuts a torn tail and says so", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:close()
      local whole = file_bytes(path)
      write_bytes(path, whole .. "\x40\0\0\0\1\2\3")
      local warnings = {}
      r = procman.router { workflows = { batch }, journal = path, warn = function(m) warnings[#warnings + 1] = m end }
      assert.equal(7, r:stats().dropped)
      assert.equal(1, r:stats().recovered)
      assert.matches("cut a torn tail of 7 bytes", warnings[1])
      r:close()
    end)

    it("refuses a journal damaged in the middle, naming file and offset, unless repairing", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:handle { event_type = "batch_created", batch_id = "b2", files = { "a" } }
      r:close()
      local bytes = file_bytes(path)
      write_bytes(path, bytes:sub(1, 30) .. string.char(bytes:byte(31) ~ 1) .. bytes:sub(32))
      assert.has_error(function() procman.router { workflows = { batch }, journal = path } end,
        "procman.router: " .. path .. ": damaged record at byte 16: a record whose checksum does not match "
        .. "(intact records follow at byte " .. (#bytes - (#bytes - 16) // 2) .. "; open with repair = true to skip it)")
      r = procman.router { workflows = { batch }, journal = path, repair = true }
      assert.is_nil(r:flow("batch", "b1"))
      assert.is_not_nil(r:flow("batch", "b2"))
      r:close()
    end)

    it("refuses a journal whose last record, written whole, is damaged; repairs with a warning", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:handle { event_type = "batch_created", batch_id = "b2", files = { "a" } }
      r:close()
      local bytes = file_bytes(path)
      write_bytes(path, bytes:sub(1, -2) .. string.char(bytes:byte(-1) ~ 1))
      local last = 16 + (#bytes - 16) // 2
      assert.has_error(function() procman.router { workflows = { batch }, journal = path } end,
        "procman.router: " .. path .. ": damaged record at byte " .. last .. ": a record whose checksum "
        .. "does not match (the last record, written whole: damage, not a torn write; open with repair = "
        .. "true to skip it)")
      local warnings = {}
      r = procman.router { workflows = { batch }, journal = path, repair = true,
                           warn = function(m) warnings[#warnings + 1] = m end }
      assert.is_not_nil(r:flow("batch", "b1"))
      assert.is_nil(r:flow("batch", "b2"))
      assert.equal(0, r:stats().dropped)
      assert.same({ "procman.router: " .. path .. ": skipped damaged records from byte " .. last
                    .. " (repair)" }, warnings)
      r:close()
    end)

    it("detects replay divergence: workflow code that changed the past", function()
      local r = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
      r:close()
      local changed = procman.workflow { name = "batch", correlate = "batch_id", starts = { "batch_created" },
        on = { batch_created = function(state, event)
          state.files = event.files
          return { { command_type = "process_file_v2", file = event.files[1] } }
        end } }
      assert.has_error(function() procman.router { workflows = { changed }, journal = path } end,
        "procman.router: replay diverged at batch/b1, sequence 1 (byte 16 of " .. path .. "): the journal says "
        .. 'the handler returned { { command_type = "process_file", file = "a" } }, but now it returns '
        .. '{ { command_type = "process_file_v2", file = "a" } }')
      local warnings = {}
      r = procman.router { workflows = { changed }, journal = path, on_divergence = "warn",
                           warn = function(m) warnings[#warnings + 1] = m end }
      assert.equal(1, #warnings)
      assert.equal("process_file", r:pending()[1].command.command_type)  -- the journal's
      r:close()
    end)

    it("says why it cannot open the journal, the Lua way", function()
      local r, err = procman.router { workflows = { batch }, journal = "/nonexistent-dir/x.pmj" }
      assert.is_nil(r)
      assert.equal("procman.router: /nonexistent-dir/x.pmj: cannot open the journal (No such file or directory)", err)
    end)
  end)

  it("checks its options", function()
    local function refused(opts, message)
      local ok, err = pcall(procman.router, opts)
      assert.is_false(ok)
      assert.equal("procman.router: " .. message, err)
    end
    refused(nil, "options must be a table, got nil")
    refused({}, "workflows must be a non-empty array of workflows, got nil")
    refused({ workflows = { {} } }, "workflows[1] is not a workflow (see procman.workflow)")
    refused({ workflows = { batch, "./x/batch.lua" } },
            'workflows[2] is not a workflow (see procman.workflow); a second result of require? write (require "...")')
    refused({ workflows = { batch, batch } }, 'workflows[2]: two workflows are named "batch"')
    refused({ workflows = { procman.workflow { name = "w", on = { a = function() end } } } },
            'workflow "w" has no correlate: its flows cannot be told apart')
    refused({ workflows = { batch }, sync = "sometimes" }, 'sync must be "always", "batch" or "none", got sometimes')
    refused({ workflows = { batch }, journal = 5 }, "journal must be a file path, got number")
    refused({ workflows = { batch }, on_divergence = "ignore" }, 'on_divergence must be "raise" (or "error") or "warn", got ignore')
    local _, err = pcall(procman.router, { workflows = { batch }, jounral = "x" })
    assert.matches("^procman.router: unknown option jounral %(did you mean 'journal'%?%); the options are ", err)
  end)

  it("is closed by close(), <close> and the garbage collector", function()
    local path = temp_path()
    do
      local r <close> = procman.router { workflows = { batch }, journal = path }
      r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    end
    local r = procman.router { workflows = { batch }, journal = path }  -- the lock was released
    assert.is_true(r:close())
    assert.is_true(r:close())
    assert.equal("procman.router (closed)", tostring(r))
    assert.has_error(function() r:handle { event_type = "x" } end, "procman.router: this router is closed")
    assert.has_error(function() r:pending() end, "procman.router: this router is closed")
    os.remove(path)
  end)
end)
