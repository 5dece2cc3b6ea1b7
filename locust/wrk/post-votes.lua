-- wrk script: POST /votes with the sample votes in turn.
--   wrk -t1 -c32 -d20s -s locust/wrk/post-votes.lua http://127.0.0.1:8081/votes   (Wasm producer)
--   wrk -t1 -c32 -d20s -s locust/wrk/post-votes.lua http://127.0.0.1:8082/votes   (gRPC producer)
-- Counts answers by status so non-202s are visible in the summary.
local votes = {}
for line in io.lines("locust/data/sample-votes.jsonl") do
  if line:match("%S") then votes[#votes + 1] = line end
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  i = i % #votes + 1
  return wrk.format(nil, nil, nil, votes[i])
end

local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
end

statuses = {} -- global: read back from each thread in done()
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("status %d: %d\n", status, n))
  end
  io.write(string.format("latency p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
