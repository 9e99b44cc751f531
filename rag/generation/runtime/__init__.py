"""How the local model runs: `engine` (a thread or a process of its own), `process` (the
engine process and its protocol), `scheduler` (continuous batching, one forward per step),
`kv_cache` (prefix reuse), `linear` (skinny CPU linear layers), `threads` (thread count under
contention)."""
