"""The HTTP service: `create_app(engine)` in app.py; `scoreline serve` runs it (nothing imported here,
so the CLI starts fast).

Files: app.py (routes, lifespan, the error handler), v1.py (JSON and Arrow scoring), protocol_v2.py
(Open Inference Protocol), scoring.py + batcher.py (micro-batching into the engine's pipeline;
request shapes and value rules are the engine's), errors.py (kinds -> statuses), asgi.py, auth.py,
metrics.py, openapi.py, settings.py.
"""
