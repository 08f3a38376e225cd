/*
** fuzz_handle.c - libFuzzer harness for pm:handle with decoded events.
**
** The input is decoded as an event (procman's codec) and handed to a flow
** of the batch workflow and to a flow of a workflow that keeps whatever it
** gets; every refused event must leave the flow exactly as it was, and
** errors must be strings. The flows are renewed now and then so that the
** history stays short.
**
** A third flow, of a workflow loaded through the sandbox (its bounded
** string functions, the memory budget, results copied), lives for 200
** events: its history outgrows the snapshot threshold again and again,
** so a refused event rebuilds its state from a snapshot (its maps of recent
** types and of the fields seen, over 16 pairs, written unsorted), and an
** event asking for it checks core.undo and core.trim against what the flow
** was.  The second flow gets its events as recovery hands them over
** (core.handle_fresh: a fresh decode, not copied).
**
** Each event (given an event_type and flow ids when it has none) also
** goes to two journaled routers of two workflows that share an event type:
** one takes its events through the engine's step (csrc/engine.c), the
** other through the router's Lua path only.  Their results, their state
** and, every 50 events, their journals must be the same, byte for byte.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "lauxlib.h"
#include "lualib.h"

#ifndef PROCMAN_LUA_PATH
#error "build with -DPROCMAN_LUA_PATH=\"<checkout>/lua/?.lua;...\" (the Makefile's LIB_PATH)"
#endif

LUAMOD_API int luaopen_procman_core(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const SETUP =
  "package.path = '" PROCMAN_LUA_PATH "'\n"
  "local procman = require 'procman'\n"
  "local batch = require 'procman.workflows.batch'\n"
  "local keeper = procman.workflow { name = 'keeper', budget = 100000, on = {\n"
  "  x = function(s, e)\n"
  "    s.n = (s.n or 0) + 1\n"
  "    s.last = e\n"
  "    if e.boom then error(e.boom) end\n"
  "    if e.loop then while true do end end\n"
  "    return e.commands or { { command_type = 'kept', e = e } }\n"
  "  end } }\n"
  "local hoard = assert(procman.loadstring([[\n"
  "return procman.workflow { name = 'hoard', budget = 50000, memory = 4000000, on = {\n"
  "  x = function(s, e)\n"
  "    s.n = (s.n or 0) + 1\n"
  "    s.recent = s.recent or {}\n"
  "    s.recent[s.n % 20] = e.event_type  -- 20 pairs: over 16, snapshots write them unsorted\n"
  "    s.fields = s.fields or {}\n"
  "    for k, v in pairs(e) do  -- small values only: a small state snapshots often\n"
  "      if type(v) ~= 'table' and (type(v) ~= 'string' or #v < 40) then s.fields[k] = v end\n"
  "    end\n"
  "    if type(e.s) == 'string' and type(e.p) == 'string' then\n"
  "      s.found = { e.s:find(e.p) }\n"
  "      s.subbed = (e.s:gsub(e.p, '<%0>'))\n"
  "    end\n"
  "    if type(e.s) == 'string' and math.type(e.rep) == 'integer' then s.long = #e.s:rep(e.rep) end\n"
  "    if e.boom then error(e.boom) end\n"
  "    if e.loop then while true do end end\n"
  "    return e.commands\n"
  "  end } }\n"
  "]], '=hoard'))\n"
  "local core = require 'procman.core'\n"
  "local flows\n"
  "local function renew()\n"
  "  flows = { batch:new('b1'), keeper:new('k1'), flows and flows[3] or hoard:new('h1') }\n"
  "  flows[1]:handle{ event_type = 'batch_created', files = { 'a', 'b', 'c' }, max_attempts = 2 }\n"
  "end\n"
  "renew()\n"
  "-- each part on its own: an event may be nested as deep as the codec\n"
  "-- takes, and wrapping it would go one level past. The keeper keeps the\n"
  "-- event in its state, one level deeper: a state pm:state() refuses to\n"
  "-- copy (not data), with that error, and the history still compared\n"
  "local function state_of(pm)\n"
  "  local ok, state = pcall(pm.state, pm)\n"
  "  if ok then return procman.encode(state) end\n"
  "  assert(state:find('state is not data: cannot encode tables nested more than', 1, true), state)\n"
  "  return state\n"
  "end\n"
  "local function snap(pm)\n"
  "  local parts = { state_of(pm), pm:status(), tostring(pm:version()) }\n"
  "  for _, e in ipairs(pm:history()) do parts[#parts + 1] = procman.encode(e) end\n"
  "  return table.concat(parts, '\\0')\n"
  "end\n"
  "-- what undo must give back (the history may restart from a snapshot)\n"
  "local function seen(pm)\n"
  "  return table.concat({ state_of(pm), pm:status(), tostring(pm:version()) }, '\\0')\n"
  "end\n"
  "local function take_back(pm, event, before)\n"
  "  if event.undo then\n"
  "    core.undo(pm)\n"
  "    assert(seen(pm) == before, 'core.undo did not give back ' .. tostring(pm))\n"
  "  elseif event.trim then\n"
  "    local was = seen(pm)\n"
  "    if core.trim(pm) then assert(#pm:history() == 0, 'core.trim left a history') end\n"
  "    assert(seen(pm) == was, 'core.trim changed ' .. tostring(pm))\n"
  "  end\n"
  "end\n"
  "function fuzz(bytes)\n"
  "  local ok, event = pcall(procman.decode, bytes)\n"
  "  if not ok or type(event) ~= 'table' then return end\n"
  "  route_event(bytes)\n"
  "  for i, pm in ipairs(flows) do\n"
  "    local before, before_seen = snap(pm), seen(pm)\n"
  "    local done, err\n"
  "    if i == 2 then  -- as recovery hands it over: a fresh decode, not copied\n"
  "      done, err = pcall(core.handle_fresh, pm, procman.decode(bytes))\n"
  "    else\n"
  "      done, err = pcall(pm.handle, pm, event)\n"
  "    end\n"
  "    if not done then\n"
  "      -- an error object the handler raised (a copy of the event's) passes as it is\n"
  "      assert(type(err) == 'string' or type(event.boom) == 'table'\n"
  "             and procman.encode(err) == procman.encode(event.boom), 'an error that is not a string')\n"
  "      assert(snap(pm) == before, 'a refused event changed ' .. tostring(pm) .. ': ' .. tostring(err))\n"
  "    elseif pm:version() > 0 and seen(pm) ~= before_seen then\n"
  "      take_back(pm, event, before_seen)\n"
  "    end\n"
  "  end\n"
  "  if flows[2]:version() > 20 then renew() end\n"
  "  if flows[3]:version() > 200 then flows[3] = hoard:new('h1') end\n"
  "end\n";

/* The routers' part (route_event), a chunk of its own: C99 strings are short. */
static const char *const ROUTERS =
  "local procman = require 'procman'  -- (SETUP set the path)\n"
  "local rk = procman.workflow { name = 'rk', correlate = 'id', starts = { 'x' }, budget = 100000,\n"
  "  on = { x = function(s, e)\n"
  "           s.n = (s.n or 0) + 1\n"
  "           s.last, s.st = e, e.st\n"
  "           if e.boom then error(e.boom) end\n"
  "           if e.loop then while true do end end\n"
  "           return e.commands\n"
  "         end,\n"
  "         y = function(s, e) if e.patch and procman.patched('p') then s.p = true end end },\n"
  "  status = function(s) return s.st end, done = function(s) return s.n == 3 end }\n"
  "local rk2 = procman.workflow { name = 'rk2', correlate = 'other', starts = { 'x' },\n"
  "  on = { x = function(s, e) s.n = (s.n or 0) + 1; return e.more end } }\n"
  "local paths, routers, handled = { os.tmpname() .. '.e.pmj', os.tmpname() .. '.l.pmj' }, nil, 0\n"
  "local function open_routers()\n"
  "  for i, p in ipairs(paths) do\n"
  "    if routers then routers[i]:close() end\n"
  "    os.remove(p)\n"
  "  end\n"
  "  routers = {}\n"
  "  for i, p in ipairs(paths) do\n"
  "    routers[i] = assert(procman.router { workflows = { rk, rk2 }, journal = p, sync = 'none',\n"
  "      on_error = 'park', on_late = 'ignore', on_unroutable = 'dead_letter',\n"
  "      clock = function() return 0 end })\n"
  "  end\n"
  "  routers[2].engine = false\n"
  "end\n"
  "open_routers()\n"
  "local function bytes_of(path)\n"
  "  local f = assert(io.open(path, 'rb'))\n"
  "  local b = f:read('a')\n"
  "  f:close()\n"
  "  return b\n"
  "end\n"
  "local function encoded(v)\n"
  "  local ok, b = pcall(procman.encode, v)\n"
  "  return ok and b or '!' .. b\n"
  "end\n"
  "local function view(r)\n"
  "  local flows = {}\n"
  "  for pm in r:flows() do\n"
  "    local ok, state = pcall(pm.state, pm)\n"
  "    flows[#flows + 1] = tostring(pm) .. '\\0' .. (ok and encoded(state) or state)\n"
  "  end\n"
  "  table.sort(flows)\n"
  "  local st = r:stats()\n"
  "  local parts = { table.concat(flows, '\\1'), encoded { st.seq, st.live, st.completed, st.journal_bytes } }\n"
  "  for _, f in ipairs { r.pending, r.parked, r.dead_letters } do  -- (deep events: copies fail)\n"
  "    local ok, v = pcall(f, r)\n"
  "    parts[#parts + 1] = ok and encoded(v) or v\n"
  "  end\n"
  "  return table.concat(parts, '\\2')\n"
  "end\n"
  "function route_event(bytes)\n"
  "  local results = {}\n"
  "  for i, r in ipairs(routers) do\n"
  "    local event = procman.decode(bytes)\n"
  "    if rawget(event, 'event_type') == nil then event.event_type = 'x' end\n"
  "    if rawget(event, 'id') == nil then event.id = #bytes end\n"
  "    if rawget(event, 'other') == nil then event.other = #bytes % 3 end\n"
  "    -- an error object's message shows its address: not the same in two routers\n"
  "    if type(rawget(event, 'boom')) == 'table' then event.boom = 'a table' end\n"
  "    local ok, out = pcall(r.handle, r, event)\n"
  "    results[i] = tostring(ok) .. (ok and encoded(out) or tostring(out))\n"
  "  end\n"
  "  assert(results[1] == results[2], 'engine and Lua path differ: ' .. results[1] .. ' / ' .. results[2])\n"
  "  assert(view(routers[1]) == view(routers[2]), 'engine and Lua path left different routers')\n"
  "  handled = handled + 1\n"
  "  if handled % 50 == 0 then\n"
  "    routers[1]:flush(); routers[2]:flush()\n"
  "    assert(bytes_of(paths[1]) == bytes_of(paths[2]), 'engine and Lua path wrote different journals')\n"
  "    open_routers()\n"
  "  end\n"
  "end\n";

/* One state for the whole run, closed at exit so that leak checkers
** (valgrind over the corpus) see nothing of it left. */
static lua_State *the_state = NULL;

static void close_state(void) {
  lua_close(the_state);
}

static lua_State *state(void) {
  lua_State *L = the_state;
  if (L == NULL) {
    L = the_state = luaL_newstate();
    atexit(close_state);
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_procman_core);
    lua_setfield(L, -2, "procman.core");
    lua_pop(L, 1);
    if (luaL_dostring(L, SETUP) != LUA_OK || luaL_dostring(L, ROUTERS) != LUA_OK) {
      fprintf(stderr, "setup: %s\n", lua_tostring(L, -1));
      abort();
    }
  }
  return L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L = state();
  lua_settop(L, 0);
  lua_getglobal(L, "fuzz");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}
