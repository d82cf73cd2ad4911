"""The API process: HTTP routes, the per-process pub/sub hub, SSE relay."""
