--- procman.workflows.order: the book's order-fulfillment process manager.
--
-- One flow per order (correlate "order_id"), started by order_created.
--
--   event                     commands                                    status
--   order_created {items}     reserve_quantity per item (stock_unit)      "created"
--   payment_approved          ship_order (order)                          "shipping"
--   payment_details_updated   ship_order (order)                          "shipping"
--   payment_declined          none                                        "payment_failure"
--   order_shipped             remove_quantity per item (stock_unit)       "shipped"   (done)
--   order_canceled            release_quantity per item (stock_unit)      "canceled"  (done)
--
-- items = { { sku = "...", quantity = n }, ... }: non-empty, each sku a
-- non-empty string listed once, each quantity a positive integer.
--
-- Where the book leaves the order of events open, procman decides, and an
-- event out of place is an error that leaves the flow unchanged:
--   payment_approved, payment_details_updated  after "created" or "payment_failure"
--                                               (new details after a decline retry it)
--   payment_declined                           after "created"
--   order_shipped                              after "shipping"
--   order_canceled                             before shipping: "created" or "payment_failure"
--   anything                                   before order_created, or after "shipped"/"canceled"
-- Loads with require and in the sandbox (procman.load), where the global
-- 'procman' holds what a workflow needs and require is not available.
local procman = rawget(_ENV, "procman") or require "procman"

-- Statuses each event may follow.
local ALLOWED = {
  payment_approved = { created = true, payment_failure = true },
  payment_details_updated = { created = true, payment_failure = true },
  payment_declined = { created = true },
  order_shipped = { shipping = true },
  order_canceled = { created = true, payment_failure = true },
}

local function check_allowed(state, event_type)
  if state.status == "idle" then
    error(event_type .. " before order_created", 0)
  end
  if not ALLOWED[event_type][state.status] then
    error(string.format("%s is not allowed when the order is %q", event_type, state.status), 0)
  end
end

-- Check the items of order_created; returns a copy for the state.
local function check_items(items)
  if type(items) ~= "table" or #items == 0 then
    error("items must be a non-empty array of { sku = ..., quantity = ... }", 0)
  end
  local copy, seen = {}, {}
  for i = 1, #items do
    local item = items[i]
    local sku = type(item) == "table" and item.sku
    if type(sku) ~= "string" or sku == "" then
      error(string.format("items[%d].sku must be a non-empty string", i), 0)
    end
    if math.type(item.quantity) ~= "integer" or item.quantity < 1 then
      error(string.format("items[%d].quantity must be a positive integer", i), 0)
    end
    if seen[sku] then
      error(string.format("sku %q is listed twice (items[%d] and items[%d])", sku, seen[sku], i), 0)
    end
    seen[sku] = i
    copy[i] = { sku = sku, quantity = item.quantity }
  end
  for k in next, items do
    if math.type(k) ~= "integer" or k < 1 or k > #items then
      error("items must be an array, but has the key " .. tostring(k), 0)
    end
  end
  return copy
end

-- One stock_unit command per item.
local function per_item(state, command_type)
  local commands = {}
  for i, item in ipairs(state.items) do
    commands[i] = { command_type = command_type, aggregate = "stock_unit",
                    sku = item.sku, quantity = item.quantity }
  end
  return commands
end

local function ship(state, event)
  check_allowed(state, event.event_type)
  state.status = "shipping"
  return { { command_type = "ship_order", aggregate = "order", order_id = state.id } }
end

return procman.workflow {
  name = "order",
  correlate = "order_id",
  starts = { "order_created" },
  init = function(id)
    return { id = id, status = "idle", items = {} }
  end,
  on = {
    order_created = function(state, event)
      if state.status ~= "idle" then
        error("the order was already created", 0)
      end
      state.items = check_items(event.items)
      state.status = "created"
      return per_item(state, "reserve_quantity")
    end,
    payment_approved = ship,
    payment_details_updated = ship,
    payment_declined = function(state, event)
      check_allowed(state, event.event_type)
      state.status = "payment_failure"
    end,
    order_shipped = function(state, event)
      check_allowed(state, event.event_type)
      state.status = "shipped"
      return per_item(state, "remove_quantity")
    end,
    order_canceled = function(state, event)
      check_allowed(state, event.event_type)
      state.status = "canceled"
      return per_item(state, "release_quantity")
    end,
  },
  done = function(state)
    return state.status == "shipped" or state.status == "canceled"
  end,
}
