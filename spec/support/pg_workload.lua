--- The workload of spec/pg_spec.lua and bench/pg_bench.lua: the events of
-- flow i, in order, the same in every process. Every fifth flow is an order
-- (created, paid, shipped); the others are batches of 1 to 3 files, some
-- of which fail.
return function(i, seed)
  math.randomseed(seed * 100003 + i)
  if i % 5 == 0 then  -- an order
    return {
      { event_type = "order_created", order_id = i, event_id = "o" .. i .. "-1",
        items = { { sku = "s" .. (i % 7), quantity = 1 + i % 3 } } },
      { event_type = "payment_approved", order_id = i, event_id = "o" .. i .. "-2" },
      { event_type = "order_shipped", order_id = i, event_id = "o" .. i .. "-3" },
    }
  end
  local n = math.random(3)
  local files, list = {}, {}
  for f = 1, n do files[f] = "f" .. f end
  list[1] = { event_type = "batch_created", batch_id = "b" .. i, event_id = "b" .. i .. "-0", files = files }
  for f = 1, n do
    list[#list + 1] = { event_type = "file_processed", batch_id = "b" .. i, event_id = "b" .. i .. "-" .. f,
                        file = { id = "f" .. f, status = math.random(4) == 1 and "error" or "success" } }
  end
  return list
end
