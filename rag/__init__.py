"""The engine, in rooms at its seams: ask, documents, index, generation, stores; `service`
wires them, `cli` is the `rag` command. Importing it sets the environment its libraries need."""

import os

# faiss and torch each spin OpenMP threads; busy-waiting ones starve each other on small
# machines (measured: query embedding 400 ms instead of 15 ms). Passive waiting costs nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# No hub is reachable at run time: every model comes from a local path or a packaged model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Our own progress bars (rich) say what is loading; the libraries' tqdm bars only add noise.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# unstructured's telemetry is opt-out; keep it off.
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
