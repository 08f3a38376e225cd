--- procman: durable, event-sourced process managers for Lua 5.4.
--
-- The public API. See docs/api.md for the contract.
local core = require "procman.core"
local workflow = require "procman.workflow"
local router = require "procman.router"
local timers = require "procman.timers"
local sandbox = require "procman.sandbox"
local patches = require "procman.patches"

local procman = {
  _VERSION = "procman " .. core.version,
  version = core.version,
  --- procman.workflow(def) -> a workflow; wf:new(id) -> a procman.pm
  workflow = workflow.define,
  is_workflow = workflow.is_workflow,
  --- procman.router(opts) -> a router of many flows, journaled (docs/api.md)
  router = router,
  --- procman.load(path), procman.loadstring(source[, name]) -> a workflow
  -- from a file run in the sandbox, or nil, message (docs/writing-workflows.md)
  load = sandbox.load,
  loadstring = sandbox.loadstring,
  --- timer directives a handler returns among its commands (docs/api.md)
  after = timers.after,
  at = timers.at,
  cancel = timers.cancel,
  --- procman.patched(id), procman.deprecate_patch(id): code changes inside
  -- a version (docs/operations.md)
  patched = patches.patched,
  deprecate_patch = patches.deprecate_patch,
  --- procman.encode(v) -> bytes; procman.decode(bytes) -> v (MessagePack)
  encode = core.encode,
  decode = core.decode,
  --- procman.copy(v) -> a deep copy of the data v, exactly decode(encode(v))
  copy = core.copy,
  --- tables nested deeper than this cannot be encoded or decoded
  max_depth = core.max_depth,
}

return procman
