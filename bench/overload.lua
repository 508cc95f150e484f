-- wrk script of the overload check (bench/overload.py, tests/api/overload.rs):
--   wrk ... -s overload.lua URL -- TOKEN    POST sign requests as client TOKEN
-- Counts the answers by status (and 503s without Retry-After); done() prints one
-- machine-readable OVERLOAD line (latencies in microseconds).
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   wrk.method = "POST"
   wrk.body = '{"sub":"load","ttl_seconds":300}'
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. (args[1] or "")
   ok, shed, other, bare = 0, 0, 0, 0
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   elseif status == 503 then
      shed = shed + 1
      if headers["retry-after"] == nil and headers["Retry-After"] == nil then
         bare = bare + 1
      end
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local ok, shed, other, bare = 0, 0, 0, 0
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("ok")
      shed = shed + thread:get("shed")
      other = other + thread:get("other")
      bare = bare + thread:get("bare")
   end
   local e = summary.errors
   io.write(string.format(
      "OVERLOAD ok=%d shed=%d other=%d bare=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d "
         .. "connect=%d read=%d write=%d timeout=%d\n",
      ok, shed, other, bare, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.timeout))
end
