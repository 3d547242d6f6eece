-- perf/wrk-pause.lua - wrk script: every connection pauses WRK_PAUSE_MS
-- milliseconds (default 1) after each response before its next request,
-- so 64 connections offer about 64 / (pause + latency) requests/s instead
-- of as many as the server can answer.  Used by perf/bench-gateway.sh for
-- the "paced" runs through the stack: a rate the trace pipeline (exporter
-- and Jaeger on the same CPUs) keeps up with, every span exported.
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "1")

function delay()
   return pause
end
