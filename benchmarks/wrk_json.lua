-- wrk reporter: prints one line "WRK_JSON {...}" after the usual text report.
-- Latencies are in microseconds; errors are wrk's socket/status counters
-- (status = responses that were not 2xx/3xx).
--
-- WRK_DELAY_MS=N in the environment makes every connection wait N ms before
-- each request (a paced "light" load; latency is still measured from send to
-- response, the wait is not included).

local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_min":%d,"lat_mean":%.1f,"lat_max":%d,"lat_stdev":%.1f,' ..
    '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
