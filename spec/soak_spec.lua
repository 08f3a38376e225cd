-- The crash soak, short: tools/soak.lua kills a child running a random
-- workload with SIGKILL at random moments and checks each recovery against
-- an in-memory reference run (`make soak` runs it long). With sync "none"
-- and "batch" the journal buffers records: a kill loses those not yet
-- written, never one written before a command left (tools/soak.lua).
local function soak(rounds, sync)
  local seed = os.time()
  local p = assert(io.popen(string.format("lua5.4 tools/soak.lua --rounds %d --seed %d --sync %s 2>&1",
                                          rounds, seed, sync)))
  local out = p:read("a")
  local ok = p:close()
  assert.is_true(ok, "seed " .. seed .. ": " .. out)
  assert.matches("^soak: " .. rounds .. " rounds killed with SIGKILL, %d+ operations recovered and checked",
                 out)
  assert.matches('as sync "' .. sync .. '" allows', out)
end

describe("crash soak (short)", function()
  it("recovers every acknowledged operation, nothing twice, over 15 kills", function()
    soak(15, "always")
  end)

  it("recovers every operation written before a command left, nothing twice, with sync none", function()
    soak(8, "none")
  end)

  it("and with sync batch", function()
    soak(5, "batch")
  end)
end)
