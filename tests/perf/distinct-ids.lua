-- wrk script: every request asks for another order id (the last path segment becomes
-- "d<thread>-<n>"), so that coalescing and caches share nothing: what they cost, not what
-- they save. Used by ab-merge.sh with DISTINCT=1.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  n = 0
end
function request()
  n = n + 1
  local path = string.gsub(wrk.path, "[^/]+$", "d" .. tid .. "-" .. n)
  return wrk.format(nil, path)
end
