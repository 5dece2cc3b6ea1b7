-- wrk script: POST /votes with the sample votes in turn (valid votes only, so every
-- request goes the whole way: front → gRPC → logic → Kafka ack).
--   wrk -t2 -c64 -d20s -s grpc/bench/post_vote.lua http://127.0.0.1:8082/votes
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

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function()
  -- per-thread tables are not merged by wrk; this prints what the main thread saw
  for status, n in pairs(statuses) do io.write(string.format("status %d: %d\n", status, n)) end
end
