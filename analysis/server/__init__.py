"""Recording and scoring through inference servers (vLLM, SGLang, llama.cpp, Ollama, any
OpenAI-compatible gateway): ``http`` (requests with retries), ``servers`` (what each kind
accepts and returns), ``generate`` (runs with many requests in flight, resumable) and
``score`` (teacher forcing a given text through a server)."""
