-- wrk script for scripts/bench http: POST WRK_BODY (JSON) with `Authorization: Bearer
-- WRK_TOKEN` to the URL given on wrk's command line. Any answer that is not 2xx makes
-- wrk print "Non-2xx or 3xx responses", which the bench treats as a failed run.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_TOKEN")
