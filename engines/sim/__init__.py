"""An OpenAI-compatible simulator of V4 serving: vLLM replicas and the hosted DeepSeek API."""
