-- wrk script: every request a fresh redeem by a new user (the hardest case: each one takes a
-- voucher and appends an outbox entry). Usage: wrk ... -s bench/redeem.lua URL -- CAMPAIGN_ID
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  campaign = args[1]
  counter = 0
  prefix = string.format("w%d-%d-", tid, math.random(1, 1000000000))
  headers = { ["Content-Type"] = "application/json" }
  path = "/campaigns/" .. campaign .. "/redeem"
end

function request()
  counter = counter + 1
  local body = '{"userId":"' .. prefix .. counter .. '","idempotencyKey":"k"}'
  return wrk.format("POST", path, headers, body)
end
