"""The serving application: `edgewise serve` (server.py) opens one engine over an exported model and its adapters
(engine.py: a decoder, the continuous batcher, the prompt cache, the metrics) and puts the OpenAI-compatible HTTP API
and the chat page in front of it (openai_api.py, static/)."""
