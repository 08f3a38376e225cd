-- The shipped order workflow (issue 3, item 6): commands, statuses, and
-- the order of events procman enforces.
local order = require "procman.workflows.order"
local flow = require "spec.support.flow"

local ITEMS = { { sku = "book", quantity = 2 }, { sku = "pen", quantity = 1 } }

local function created(id)
  local pm = order:new(id or "o1")
  pm:handle { event_type = "order_created", order_id = id or "o1", items = ITEMS }
  return pm
end

local function per_item(command_type)
  return {
    { command_type = command_type, aggregate = "stock_unit", sku = "book", quantity = 2 },
    { command_type = command_type, aggregate = "stock_unit", sku = "pen", quantity = 1 },
  }
end

local function done(pm)
  return order.done(flow.raw_state(order, pm))
end

describe("procman.workflows.order", function()
  it("is a workflow for the router", function()
    assert.equal("order", order.name)
    assert.equal("order_id", order.correlate)
    assert.same({ "order_created" }, order.starts)
  end)

  it("reserves, ships and removes stock", function()
    local pm = order:new("o1")
    assert.equal("idle", pm:status())
    assert.same(per_item("reserve_quantity"), pm:handle { event_type = "order_created", items = ITEMS })
    assert.equal("created", pm:status())
    assert.is_false(done(pm))
    assert.same({ { command_type = "ship_order", aggregate = "order", order_id = "o1" } },
                pm:handle { event_type = "payment_approved" })
    assert.equal("shipping", pm:status())
    assert.same(per_item("remove_quantity"), pm:handle { event_type = "order_shipped" })
    assert.equal("shipped", pm:status())
    assert.is_true(done(pm))
    assert.same({ id = "o1", status = "shipped", items = ITEMS }, pm:state())
  end)

  it("retries a declined payment when the details are updated", function()
    local pm = created()
    assert.same({}, pm:handle { event_type = "payment_declined" })
    assert.equal("payment_failure", pm:status())
    assert.same({ { command_type = "ship_order", aggregate = "order", order_id = "o1" } },
                pm:handle { event_type = "payment_details_updated" })
    assert.equal("shipping", pm:status())
  end)

  it("releases stock when canceled, before or after a declined payment", function()
    local pm = created()
    assert.same(per_item("release_quantity"), pm:handle { event_type = "order_canceled" })
    assert.equal("canceled", pm:status())
    assert.is_true(done(pm))
    pm = created("o2")
    pm:handle { event_type = "payment_declined" }
    assert.same(per_item("release_quantity"), pm:handle { event_type = "order_canceled" })
  end)

  describe("refuses, leaving the flow unchanged", function()
    it("events before order_created", function()
      for _, t in ipairs({ "payment_approved", "payment_declined", "order_shipped", "order_canceled" }) do
        flow.refuses(order:new("o1"), { event_type = t }, t .. " before order_created")
      end
    end)
    it("a second order_created", function()
      flow.refuses(created(), { event_type = "order_created", items = ITEMS }, "the order was already created")
    end)
    it("events out of place", function()
      flow.refuses(created(), { event_type = "order_shipped" }, 'order_shipped is not allowed when the order is "created"')
      local shipping = created()
      shipping:handle { event_type = "payment_approved" }
      flow.refuses(shipping, { event_type = "order_canceled" }, 'order_canceled is not allowed when the order is "shipping"')
      flow.refuses(shipping, { event_type = "payment_declined" }, "not allowed")
      flow.refuses(shipping, { event_type = "payment_approved" }, "not allowed")
      local declined = created()
      declined:handle { event_type = "payment_declined" }
      flow.refuses(declined, { event_type = "payment_declined" }, 'not allowed when the order is "payment_failure"')
    end)
    it("anything after the order is done", function()
      local shipped = created()
      shipped:handle { event_type = "payment_approved" }
      shipped:handle { event_type = "order_shipped" }
      for _, t in ipairs({ "payment_approved", "order_shipped", "order_canceled" }) do
        flow.refuses(shipped, { event_type = t }, 'is not allowed when the order is "shipped"')
      end
      local canceled = created()
      canceled:handle { event_type = "order_canceled" }
      flow.refuses(canceled, { event_type = "payment_approved" }, 'when the order is "canceled"')
    end)
    it("bad items", function()
      local pm = order:new("o1")
      flow.refuses(pm, { event_type = "order_created" }, "items must be a non-empty array")
      flow.refuses(pm, { event_type = "order_created", items = {} }, "items must be a non-empty array")
      flow.refuses(pm, { event_type = "order_created", items = { { quantity = 1 } } }, "items[1].sku must be a non-empty string")
      flow.refuses(pm, { event_type = "order_created", items = { { sku = "a", quantity = 0 } } },
                   "items[1].quantity must be a positive integer")
      flow.refuses(pm, { event_type = "order_created", items = { { sku = "a", quantity = 1.5 } } }, "positive integer")
      flow.refuses(pm, { event_type = "order_created", items = { { sku = "a", quantity = 1 }, { sku = "a", quantity = 2 } } },
                   'sku "a" is listed twice (items[1] and items[2])')
      flow.refuses(pm, { event_type = "order_created", items = { { sku = "a", quantity = 1 }, x = 1 } },
                   "items must be an array, but has the key x")
    end)
    it("an event for another order", function()
      flow.refuses(created("o1"), { event_type = "payment_approved", order_id = "o2" },
                   "event 'payment_approved' belongs to flow 'o2' (event.order_id)")
    end)
  end)
end)
