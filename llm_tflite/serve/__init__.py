"""``llm-tflite serve``: the autocomplete app's screen and an HTTP API (Starlette + uvicorn)."""
