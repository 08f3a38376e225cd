-- Observability: the router's hooks, r:metrics() and procman inspect
-- --metrics. The exposition is checked by a strict parser here, and by
-- Prometheus's own promtool where it is installed.
local procman = require "procman"
local core = require "procman.core"
local batch = require "procman.workflows.batch"
local files = require "spec.support.files"
local procman_cmd = require "spec.support.procman_cmd"

-- ---------------------------------------------------------------------
-- A strict parser of the text format (version 0.0.4)
-- ---------------------------------------------------------------------

local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"

local function parse_value(s, where)
  if s == "+Inf" then return math.huge elseif s == "-Inf" then return -math.huge end
  if s == "NaN" then return 0 / 0 end
  local v = tonumber(s)
  assert(v and s:match("^[-+]?[%d.]+[eE]?[-+]?%d*$"), where .. ": bad value " .. s)
  return v
end

-- Labels: name="value" pairs; only \\, \" and \n may be escaped.
local function parse_labels(text, where)
  local labels, pos = {}, 1
  while pos <= #text do
    local name, after = text:match("^([a-zA-Z_][a-zA-Z0-9_]*)=\"()", pos)
    assert(name, where .. ": bad label at " .. text:sub(pos))
    local value, i = {}, after
    while true do
      local c = text:sub(i, i)
      assert(c ~= "" and c ~= "\n", where .. ": unterminated label value")
      if c == '"' then break end
      if c == "\\" then
        local e = text:sub(i + 1, i + 1)
        local map = { ["\\"] = "\\", ['"'] = '"', n = "\n" }
        assert(map[e], where .. ": bad escape \\" .. e)
        value[#value + 1], i = map[e], i + 2
      else
        value[#value + 1], i = c, i + 1
      end
    end
    assert(labels[name] == nil, where .. ": label " .. name .. " twice")
    labels[name] = table.concat(value)
    pos = i + 1
    if text:sub(pos, pos) == "," then pos = pos + 1 else assert(pos == #text + 1, where .. ": junk after labels") end
  end
  return labels
end

local function split_sample(line, where)
  local name, rest = line:match("^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$")
  assert(name, where .. ": bad sample line")
  local labels, value = {}
  if rest:sub(1, 1) == "{" then
    local close = rest:find('}%s[^}]*$')
    assert(close, where .. ": no closing brace")
    labels = parse_labels(rest:sub(2, close - 1), where)
    value = rest:sub(close + 2)
  else
    value = rest:match("^ (.+)$")
  end
  assert(value and not value:find(" "), where .. ": a sample is name, labels, one value (no timestamp here)")
  return name, labels, parse_value(value, where)
end

local function series_key(name, labels)
  local keys = {}
  for k in pairs(labels) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { name }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. labels[k] end
  return table.concat(parts, "\0")
end

local function family_of(families, name)
  if families[name] then return name end
  for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
    local base = name:sub(1, -#suffix - 1)
    if name:sub(-#suffix) == suffix and families[base] and families[base].type == "histogram" then
      return base
    end
  end
  return nil
end

-- Histograms: buckets cumulative, le ascending, +Inf last and equal to _count.
local function check_histograms(families)
  for name, f in pairs(families) do
    if f.type == "histogram" then
      local by_series = {}
      for _, s in ipairs(f.samples) do
        local labels = {}
        for k, v in pairs(s.labels) do if k ~= "le" then labels[k] = v end end
        local key = series_key(name, labels)
        by_series[key] = by_series[key] or { buckets = {} }
        if s.name == name .. "_bucket" then
          local b = by_series[key].buckets
          local le = parse_value(assert(s.labels.le, name .. ": a bucket without le"), name)
          assert(#b == 0 or (le > b[#b].le and s.value >= b[#b].value), name .. ": buckets out of order")
          b[#b + 1] = { le = le, value = s.value }
        elseif s.name == name .. "_count" then
          by_series[key].count = s.value
        end
      end
      for key, series in pairs(by_series) do
        local last = series.buckets[#series.buckets]
        assert(last and last.le == math.huge, key .. ": no +Inf bucket")
        assert(last.value == series.count, key .. ": +Inf bucket differs from _count")
      end
    end
  end
end

--- parse(text) -> { [family] = { type, help, samples = { { name, labels, value } } } }
local function parse(text)
  assert(text:sub(-1) == "\n", "the exposition ends with a newline")
  local families, seen, current = {}, {}, nil
  local n = 0
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    local where = "line " .. n
    local kind, name, rest = line:match("^# (%u+) (%S+) ?(.*)$")
    if kind == "HELP" then
      assert(name:match(NAME), where .. ": bad name")
      assert(families[name] == nil, where .. ": " .. name .. " described twice (or after its samples)")
      assert(not rest:find("\\[^\\n]"), where .. ": bad escape in help")
      families[name] = { help = rest, samples = {} }
      current = name
    elseif kind == "TYPE" then
      assert(current == name and families[name].type == nil, where .. ": TYPE must follow its HELP, once")
      assert(({ counter = true, gauge = true, histogram = true })[rest], where .. ": type " .. rest)
      assert(rest ~= "counter" or name:match("_total$"), where .. ": a counter's name ends in _total")
      families[name].type = rest
    else
      assert(line ~= "" and line:sub(1, 1) ~= "#", where .. ": unexpected line " .. line)
      local sname, labels, value = split_sample(line, where)
      local fam = family_of(families, sname)
      assert(fam == current, where .. ": sample " .. sname .. " outside its family")
      local key = series_key(sname, labels)
      assert(not seen[key], where .. ": series repeated")
      seen[key] = true
      table.insert(families[fam].samples, { name = sname, labels = labels, value = value })
    end
  end
  check_histograms(families)
  return families
end

-- The value of one series (nil if absent).
local function value(families, name, labels)
  local fam = families[family_of(families, name) or name]
  for _, s in ipairs(fam and fam.samples or {}) do
    local same = s.name == name
    for k, v in pairs(labels or {}) do same = same and s.labels[k] == v end
    for k in pairs(s.labels) do same = same and (labels or {})[k] ~= nil end
    if same then return s.value end
  end
  return nil
end

local PROMTOOL = io.open("/usr/bin/promtool") and "/usr/bin/promtool"

-- Both checks: the parser here, and promtool where installed.
local function check(text)
  local families = parse(text)
  if PROMTOOL then
    local tmp = os.tmpname()
    files.write(tmp, text)
    local p = io.popen(PROMTOOL .. " check metrics < " .. tmp .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    os.remove(tmp)
    assert(ok, "promtool check metrics: " .. out)
    assert.equal("", out)
  end
  return families
end

-- ---------------------------------------------------------------------

local function reminder_workflow(name)
  return procman.workflow {
    name = name, correlate = "id", starts = { "start" },
    on = {
      start = function(state)
        state.status = "waiting"
        return { { command_type = "remind" }, procman.after(10, { event_type = "late" }) }
      end,
      late = function(state) state.status = "late" end,
      poison = function() error("bad event", 0) end,
      stop = function(state) state.status = "stopped" end,
    },
    done = function(state) return state.status == "stopped" end,
  }
end

describe("the strict parser of this spec", function()
  it("refuses what the format does not allow", function()
    local bad = {
      "x 1",                                                  -- no HELP/TYPE, no newline
      "# HELP x h\n# TYPE x counter\nx 1\n",                  -- a counter without _total
      '# HELP x h\n# TYPE x gauge\nx{a="\\t"} 1\n',           -- a bad escape
      '# HELP x h\n# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n', -- a series twice
      "# HELP x h\n# TYPE x gauge\nx one\n",                  -- not a number
      '# HELP h h\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    }
    for _, text in ipairs(bad) do assert.has_error(function() parse(text) end) end
    assert.same(3, value(parse('# HELP x h\n# TYPE x gauge\nx{a="q\\"\\\\\\n"} 3\n'), "x",
                               { a = 'q"\\\n' }))
  end)
end)

describe("r:metrics()", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("counts activity and shows the state, in valid exposition", function()
    local now = 1000
    local r = procman.router { workflows = { batch, reminder_workflow("reminder") }, journal = path,
                               metrics = true, on_error = "park", on_unroutable = "dead_letter",
                               clock = function() return now end }
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a", "b" } }
    r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "a", status = "success" } }
    r:handle { event_type = "file_processed", batch_id = "b1", file = { id = "b", status = "error" } }
    r:handle { event_type = "start", id = "r1" }
    r:handle { event_type = "start", id = "r2" }
    r:handle { event_type = "poison", id = "r2" }
    r:handle { event_type = "stop", id = "nobody" }  -- a dead letter
    r:tick(1013)
    assert.truthy(r:flush())
    local m = check(r:metrics())
    assert.equal(3, value(m, "procman_events_handled_total", { workflow = "batch" }))
    assert.equal(0 + 3, value(m, "procman_events_handled_total", { workflow = "reminder" }))
    assert.equal(2, value(m, "procman_commands_emitted_total", { workflow = "batch" }))
    assert.equal(2, value(m, "procman_commands_emitted_total", { workflow = "reminder" }))
    assert.equal(2, value(m, "procman_flows_started_total", { workflow = "reminder" }))
    assert.equal(1, value(m, "procman_flows_completed_total", { workflow = "batch", status = "error" }))
    assert.equal(1, value(m, "procman_flows_parked_total", { workflow = "reminder" }))
    assert.equal(2, value(m, "procman_timers_fired_total", { workflow = "reminder" }))  -- r2's is held
    assert.equal(2, value(m, "procman_timer_lateness_seconds_bucket", { workflow = "reminder", le = "5" }))
    assert.equal(0, value(m, "procman_timer_lateness_seconds_bucket", { workflow = "reminder", le = "2" }))
    assert.equal(1, value(m, "procman_dead_letters_total"))
    assert.equal(6, value(m, "procman_event_handle_seconds_count", { workflow = "batch" })
                    + value(m, "procman_event_handle_seconds_count", { workflow = "reminder" }))
    assert.equal(9, value(m, "procman_journal_appends_total"))  -- 8 events (one held), 1 dead letter
    assert.equal(r:stats().journal_bytes - 16, value(m, "procman_journal_appended_bytes_total"))
    assert.equal(9, value(m, "procman_journal_fsync_seconds_count"))  -- sync "always"
    assert.is_true(value(m, "procman_journal_fsync_seconds_sum") > 0)
    -- the gauges
    assert.equal(2, value(m, "procman_flows_live", { workflow = "reminder" }))
    assert.equal(1, value(m, "procman_flows_parked", { workflow = "reminder" }))
    assert.equal(2, value(m, "procman_parked_events", { workflow = "reminder" }))  -- poison + the timer's
    assert.equal(1, value(m, "procman_flows_completed", { workflow = "batch" }))
    assert.equal(4, value(m, "procman_outbox_pending"))
    assert.equal(1, value(m, "procman_dead_letters"))
    assert.equal(1000, value(m, "procman_dead_letter_oldest_timestamp_seconds"))
    assert.equal(r:stats().journal_bytes, value(m, "procman_journal_bytes"))
    assert.is_nil(value(m, "procman_timer_next_due_timestamp_seconds"))  -- none pending
    r:close()
  end)

  it("has only the gauges without metrics = true, and the same as procman inspect --metrics", function()
    local r = procman.router { workflows = { reminder_workflow("reminder") }, journal = path,
                               clock = function() return 50 end }
    r:handle { event_type = "start", id = 1 }
    local text = r:metrics()
    local m = check(text)
    assert.is_nil(m.procman_events_handled_total)
    assert.equal(60, value(m, "procman_timer_next_due_timestamp_seconds"))
    assert.equal(1, value(m, "procman_timers_pending"))
    r:close()
    local result = procman_cmd("inspect " .. path .. " --metrics")
    assert.equal(0, result.code)
    local at_rest = result.out
    check(at_rest)
    assert.equal(text, at_rest)
    -- and after more flows, one completed, a compaction and a reopening
    r = procman.router { workflows = { reminder_workflow("reminder") }, journal = path,
                         clock = function() return 50 end }
    r:handle { event_type = "start", id = 2 }
    r:handle { event_type = "stop", id = 2 }
    assert.truthy(r:compact())
    r:close()
    r = procman.router { workflows = { reminder_workflow("reminder") }, journal = path }
    text = r:metrics()
    r:close()
    assert.equal(1, value(check(text), "procman_flows_completed", { workflow = "reminder" }))
    assert.equal(text, procman_cmd("inspect " .. path .. " --metrics").out)
  end)

  it("escapes label values: quotes, backslashes, newlines in workflow names", function()
    local name = 'we"ird\\name\nwith a newline'
    local r = procman.router { workflows = { reminder_workflow(name) }, metrics = true }
    r:handle { event_type = "start", id = 1 }
    local text = r:metrics()
    assert.matches('procman_flows_live{workflow="we\\"ird\\\\name\\nwith a newline"} 1', text, 1, true)
    assert.equal(1, value(check(text), "procman_flows_live", { workflow = name }))
    r:close()
  end)
end)

describe("the router's hooks", function()
  local path
  files.journal_each_test(function(p) path = p end)

  it("report each kind of activity, after it is journaled, never during recovery", function()
    local seen = {}
    local function log(name)
      return function(...) seen[#seen + 1] = { name, ... } end
    end
    local hooks = {}
    for _, name in ipairs { "flow_started", "flow_completed", "flow_parked", "flow_resumed",
                            "timer_fired", "command_emitted" } do
      hooks[name] = log(name)
    end
    local handled, appended, fsyncs, letters = {}, {}, 0, {}
    hooks.event_handled = function(w, f, t, seconds)
      assert.is_true(seconds >= 0 and seconds < 60)
      handled[#handled + 1] = { w, f, t }
    end
    hooks.journal_append = function(kind, bytes) appended[#appended + 1] = { kind, bytes } end
    hooks.journal_fsync = function(seconds)
      assert.is_true(seconds >= 0)
      fsyncs = fsyncs + 1
    end
    hooks.dead_letter = function(letter) letters[#letters + 1] = letter end
    local broken = true
    local wf = procman.workflow {
      name = "w", correlate = "id", starts = { "go" },
      on = {
        go = function() return { { command_type = "c" }, procman.after(5, { event_type = "ping" }) } end,
        ping = function() if broken then error("broken", 0) end end,
        stop = function(state) state.stop = true end,
      },
      done = function(state) return state.stop end,
    }
    local r = procman.router { workflows = { wf }, journal = path, hooks = hooks, on_error = "park",
                               on_unroutable = "dead_letter", clock = function() return 0 end }
    r:handle { event_type = "go", id = 1 }
    r:tick(7)
    broken = false
    r:resume("w", 1)
    r:handle { event_type = "stop", id = 1 }
    r:handle { event_type = "stop", id = 2 }
    assert.same({
      { "flow_started", "w", 1 },
      { "command_emitted", { id = "w/1/1/1", workflow = "w", flow = 1, command = { command_type = "c" } } },
      { "flow_parked", "w", 1, "w/1: handler for 'ping' failed: broken" },
      { "timer_fired", "w", 1, "ping", 2 },
      { "flow_resumed", "w", 1 },
      { "flow_completed", "w", 1, "none" },  -- (no status function, no state.status)
    }, seen)
    assert.same({ { "w", 1, "go" }, { "w", 1, "ping" }, { "w", 1, "stop" } }, handled)
    assert.same({ 1, 1, 1, 1, 10 }, { appended[1][1], appended[2][1], appended[3][1], appended[4][1],
                                      appended[5][1] })
    assert.equal(r:stats().journal_bytes - 16, appended[1][2] + appended[2][2] + appended[3][2]
                                                + appended[4][2] + appended[5][2])
    assert.equal(5, fsyncs)
    assert.same({ 1, { event_type = "stop", id = 2 } }, { letters[1].id, letters[1].event })
    r:close()
    seen = {}
    r = procman.router { workflows = { wf }, journal = path, hooks = hooks }
    assert.same({}, seen)  -- recovery reports nothing
    r:close()
  end)

  it("report events ignored by policy: unknown types, late events, the late part of an event", function()
    local function stoppable(name, done)
      return procman.workflow { name = name, correlate = "id", starts = { "go" },
        on = { go = function() end, stop = function(state) state.stopped = true end },
        done = done and function(state) return state.stopped end or nil }
    end
    local ignored = {}
    local hooks = { event_ignored = function(...) ignored[#ignored + 1] = { ... } end }
    local r = procman.router { workflows = { stoppable("a", true), stoppable("b") }, hooks = hooks,
                               metrics = true }
    r:handle { event_type = "go", id = 1 }
    r:handle { event_type = "stop", id = 1 }
    r:handle { event_type = "stop", id = 1 }  -- a is complete, b takes it: the late part is ignored
    r:handle { event_type = "nope" }            -- on_unknown = "ignore" (the default)
    local m = check(r:metrics())
    r:close()
    r = procman.router { workflows = { stoppable("a", true) }, hooks = hooks, on_late = "ignore" }
    r:handle { event_type = "go", id = 1 }
    r:handle { event_type = "stop", id = 1 }
    r:handle { event_type = "stop", id = 1 }
    r:close()
    local late = "flow a/1 is complete (none): event 'stop' came after it finished"
    assert.same({ { "late", "stop", late }, { "unknown", "nope", "no workflow handles event type 'nope'" },
                  { "late", "stop", late } }, ignored)
    assert.equal(1, value(m, "procman_events_ignored_total", { kind = "late" }))
    assert.equal(1, value(m, "procman_events_ignored_total", { kind = "unknown" }))
  end)

  it("a hook that raises is reported through warn and changes nothing", function()
    local warnings = {}
    local r = procman.router { workflows = { batch }, journal = path,
                               warn = function(m) warnings[#warnings + 1] = m end,
                               hooks = { event_handled = function() error("oops", 0) end } }
    local out = r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    assert.equal(1, #out)
    assert.same({ "procman.router: hook event_handled failed: oops" }, warnings)
    assert.equal(1, r:flow("batch", "b1"):version())
    r:close()
  end)

  it("r:hook sets and unsets one hook; names and functions are checked", function()
    local r = procman.router { workflows = { batch }, metrics = true }
    local count = 0
    local function f() count = count + 1 end
    assert.is_nil(r:hook("event_handled", f))
    r:handle { event_type = "batch_created", batch_id = "b1", files = { "a" } }
    assert.equal(f, r:hook("event_handled", nil))
    r:handle { event_type = "batch_created", batch_id = "b2", files = { "a" } }
    assert.equal(1, count)
    assert.equal(2, value(check(r:metrics()), "procman_events_handled_total", { workflow = "batch" }))
    assert.has_error(function() r:hook("event_handeld", f) end,
                     "procman.router: unknown hook event_handeld (hooks: event_handled, command_emitted, "
                     .. "flow_started, flow_completed, flow_parked, flow_resumed, timer_fired, dead_letter, "
                     .. "event_ignored, journal_append, journal_fsync)")
    assert.has_error(function() r:hook("dead_letter", 5) end,
                     "procman.router: hook dead_letter must be a function, got number")
    assert.has_error(function() procman.router { workflows = { batch }, hooks = 5 } end,
                     "procman.router: hooks must be a table, got number")
    assert.has_error(function() procman.router { workflows = { batch }, metrics = "yes" } end,
                     "procman.router: metrics must be a boolean, got string")
    r:close()
  end)

  it("the journal times each fdatasync", function()
    local j = assert(core.journal_open(path, { sync = "batch" }))
    assert.same({ 0, 0.0, 0.0 }, { j:syncs() })
    j:append(1, "x")
    assert.equal(0, (j:syncs()))
    assert.truthy(j:sync())
    local n, total, last = j:syncs()
    assert.equal(1, n)
    assert.is_true(total > 0 and total == last)
    j:close()
  end)
end)
