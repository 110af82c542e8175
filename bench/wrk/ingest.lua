-- POST /api/v1/ingest with a new web-page URL each time (so every request creates a job).
-- Arguments after `--`: the API key, then a tag that keeps URLs of separate runs apart.
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  key = args[1]
  tag = args[2] or "run"
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  local body = string.format('{"url": "https://example.com/bench/%s/%d/%d"}', tag, tid, counter)
  return wrk.format(nil, "/api/v1/ingest", nil, body)
end
