-- The crash soak, short: tools/soak.lua kills a child running a random
-- workload with SIGKILL at random moments and checks each recovery against
-- an in-memory reference run (`make soak` runs it long).
describe("crash soak (short)", function()
  it("recovers every acknowledged operation, nothing twice, over 15 kills", function()
    local seed = os.time()
    local p = assert(io.popen(string.format("lua5.4 tools/soak.lua --rounds 15 --seed %d 2>&1", seed)))
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, "seed " .. seed .. ": " .. out)
    assert.matches("^soak: 15 rounds killed with SIGKILL, %d+ operations recovered and checked", out)
  end)
end)
