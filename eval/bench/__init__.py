"""`rag bench`: speed figures, each beside the raw library doing the same work in the same run.

One module per thing measured:
- `ingest`: the whole ingest pipeline beside raw encode of the same chunks;
- `retrieval`: dense and hybrid retrieval over generated indexes beside raw faiss;
- `generation`: one stream of the engine beside plain `model.generate` (and llama.cpp);
- `serving`: asks (fresh and cached), process vs thread engine, concurrent streams, prompt
  prefixes, float32 vs bfloat16;
- `store`: SQLite vs PostgreSQL, the change-log follower, index builds, SAQ queues
  (`--database-url`);
- `startup`: time to ready and peak memory of a fresh process;
- `measure`: the options and how a figure is taken; `run`: runs the sections and assembles
  the JSON (headline figures included).
"""

from eval.bench.measure import BenchOptions
from eval.bench.run import run_bench

__all__ = ["BenchOptions", "run_bench"]
