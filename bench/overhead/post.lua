-- wrk script: POST one chat completion body, optional bearer key from the environment.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
wrk.body = '{"model": "deepseek-chat", "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 16}'
