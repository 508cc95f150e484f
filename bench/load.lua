-- wrk script for bench/run.py (the load shape of the published peer comparisons).
--   wrk ... -s load.lua URL -- sign TOKEN   POST a sign request (body: env SIGN_BODY)
--   wrk ... -s load.lua URL -- get [ETAG]   GET, with If-None-Match: ETAG when given
-- With env USER_AGENT set, every request sends it as User-Agent. With env PACE_MS set, each
-- connection waits that many milliseconds before each request (a load held to a rate).
-- done() prints one machine-readable RESULT line (latencies in microseconds).
function init(args)
   local mode = args[1] or "get"
   if os.getenv("USER_AGENT") then
      wrk.headers["User-Agent"] = os.getenv("USER_AGENT")
   end
   if mode == "sign" then
      wrk.method = "POST"
      wrk.body = os.getenv("SIGN_BODY") or '{"sub":"acct_1","ttl_seconds":300}'
      wrk.headers["Content-Type"] = "application/json"
      wrk.headers["Authorization"] = "Bearer " .. (args[2] or "")
   elseif args[2] and args[2] ~= "" then
      wrk.headers["If-None-Match"] = args[2]
   end
end

local pace = tonumber(os.getenv("PACE_MS") or "")
if pace and pace > 0 then
   function delay()
      return pace
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d status_err=%d sock_err=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.status, e.connect + e.read + e.write + e.timeout))
end
