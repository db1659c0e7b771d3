"""The benchmark suite behind `scoreline bench`: models, peers, kernels and the other sections, report.

Modules (each imported only by the sections that need it, so a missing peer never breaks the rest):
`timing` (numpy-only timing loops, shared with peer worker processes), `models` (cached benchmark
models and rows), `peers` (one engine adapter per peer), `kernels`, `sections` (pipeline, HTTP,
bulk, reusing the other benchmark files), `scaling`, `report`, `runner` (the orchestration).
"""
