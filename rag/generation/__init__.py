"""Generating answers: `base` (the Generator protocol, TokenStream, token counts and
`build_generator`), the backends `local` (transformers on this machine) and `openai` (an
OpenAI-compatible server), `model_files` (packaged GGUF -> converted model), `stopping` (where
an answer ends), and `runtime/` (how the local model runs: engine, scheduler, KV cache)."""
