-- wrk script for scripts/bench. Usage: wrk ... -s bench/wrk.lua URL -- MODE [CAMPAIGN_ID]
--   redeem ID   every request a fresh redeem by a new user (the hardest case: each one takes a
--               voucher and appends an outbox entry)
--   create      every request creates a campaign
--   nowhere     GET of an unknown path: the server's cheapest answer, the baseline
-- Prints one line for scripts/bench:
--   "wrk-result <requests/s> <p50 ms> <p95 ms> <p99 ms> <socket errors> <non-2xx/3xx answers>
--    <requests>".
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  campaign = args[2]
  counter = 0
  -- wrk does not seed Lua's generator: without this, every run would reuse the same users.
  math.randomseed(os.time() * 100 + tid)
  prefix = string.format("w%d-%d-", tid, math.random(1, 1000000000))
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  counter = counter + 1
  if mode == "redeem" then
    local body = '{"userId":"' .. prefix .. counter .. '","idempotencyKey":"k"}'
    return wrk.format("POST", "/campaigns/" .. campaign .. "/redeem", headers, body)
  elseif mode == "create" then
    return wrk.format("POST", "/campaigns", headers, '{"name":"bench filler","total":1000}')
  end
  return wrk.format("GET", "/nowhere")
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format("wrk-result %.0f %.2f %.2f %.2f %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, e.connect + e.read + e.write + e.timeout, e.status,
    summary.requests))
end
