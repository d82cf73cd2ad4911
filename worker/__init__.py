"""The worker process: arq jobs that call the LLM and append token batches."""
