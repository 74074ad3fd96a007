-- Replays pre-signed webhooks at saturation: wrk -s presigned.lua URL -- FILE START THREADS
-- FILE holds one request per line, "path<TAB>signature<TAB>body" (bench/signed.py writes it);
-- every line is a distinct event.  Thread t of THREADS sends lines START+t, START+t+THREADS...
-- so no event is sent twice while the file lasts (past its end it wraps around).
-- Requests are formatted once in init(); request() only hands out the next one.
-- done() prints one "WRK {json}" line for bench/run.py, with "next": the first unused line, and
-- "low": the lowest thread's position (below low - connections, every line was answered).
-- fixed_rate.lua reuses this file and adds fields through the global report_fields().

threads = {}

function setup(thread)
  thread:set("first", #threads)
  table.insert(threads, thread)
end

local requests = {}
local stride = 1
position = 0

function init(args)
  local file = assert(io.open(args[1], "rb"))
  for line in file:lines() do
    local path, signature, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {["Content-Type"] = "application/json", ["X-UIP-Signature"] = signature}
    requests[#requests + 1] = wrk.format("POST", path, headers, body)
  end
  file:close()
  stride = tonumber(args[3] or 1)
  position = tonumber(args[2] or 0) + (first or 0)
end

function request()
  local this = requests[position % #requests + 1]
  position = position + stride
  return this
end

function done(summary, latency, requests)
  local e = summary.errors
  local next, low = 0, nil
  for _, thread in ipairs(threads) do
    next = math.max(next, thread:get("position"))
    low = math.min(low or thread:get("position"), thread:get("position"))
  end
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"status_errors":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"next":%d,"low":%d%s}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, next, low or next,
    report_fields and report_fields() or ""))
end
