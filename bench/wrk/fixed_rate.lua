-- The same pre-signed requests at a constant offered rate:
--   wrk -s fixed_rate.lua URL -- FILE START THREADS RATE
-- RATE is requests/s per wrk thread.  Every request has a slot on a fixed schedule
-- (start + k/RATE); a connection that becomes free takes the next slot and waits for it, so
-- arrivals are evenly spaced and do not depend on how fast the server answers (open loop),
-- as long as a connection is free when its slot comes.  When none is, the request goes
-- late and wrk would time it from the late send (coordinated omission): such sends are
-- counted and their lateness reported, so a run can be seen to be free of it.
-- wrk's delay() has millisecond resolution: a send may leave up to 1 ms early.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "presigned.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local now_spec = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_spec)  -- CLOCK_MONOTONIC
  return tonumber(now_spec.tv_sec) * 1000 + tonumber(now_spec.tv_nsec) / 1e6
end

local replay_init = init
local interval, start, slot = nil, nil, 0
late, late_ms_max, late_ms_sum = 0, 0, 0

function init(args)
  replay_init(args)
  interval = 1000 / tonumber(args[4])
end

function delay()
  local now = now_ms()
  start = start or now
  local due = start + slot * interval
  slot = slot + 1
  if now - due > 1 then
    late, late_ms_sum, late_ms_max = late + 1, late_ms_sum + (now - due), math.max(late_ms_max, now - due)
  end
  return math.max(0, math.floor(due - now))
end

function report_fields()
  local count, sum, max = 0, 0, 0
  for _, thread in ipairs(threads) do
    count, sum = count + thread:get("late"), sum + thread:get("late_ms_sum")
    max = math.max(max, thread:get("late_ms_max"))
  end
  return string.format(',"late":%d,"late_ms_sum":%.3f,"late_ms_max":%.3f', count, sum, max)
end
