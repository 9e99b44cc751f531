"""The vector index: `vectors` (the VectorIndex protocol and FAISS behind it), `live`
(LiveIndex: this process's index, loaded, refreshed and followed), `writer` (the lease that
lets one process change it at a time), `log_follower` (PostgreSQL's change log applied)."""
