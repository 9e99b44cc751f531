"""The Litestar HTTP API: routes, errors, SSE and the web widget."""
