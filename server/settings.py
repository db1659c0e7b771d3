"""ServerSettings: every knob of the HTTP service in one frozen struct (limits, batching, keys)."""

from __future__ import annotations

import msgspec

__all__ = ["ServerSettings"]


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits, micro-batching and API keys; `scoreline serve` fills it from its flags.

    Batching: `max_batch` rows per engine call, `max_wait_us` wait budget measured from the oldest
    waiting request while another batch runs (an idle service scores at once), and the time rows
    waiting at the end of a bigger batch are held for its clients' next requests (see batcher.py),
    `max_queue` waiting rows per deployment before answering 503, `max_in_flight` batches per
    deployment scoring at once, `threads` executor threads for scoring. `request_timeout_s` is the
    per-request deadline. Limits: `max_body_bytes` per request body, `max_rows` rows per JSON or v2
    request, `max_arrow_rows` rows per Arrow IPC request. Keys: scoring needs one of `api_keys` when
    any is set; admin endpoints need one of `admin_keys` and are refused when none is set.
    Connections (server/connections.py): `max_connections_per_client` open connections per client
    address, `read_timeout_s` for a request (or a new connection's first request) to arrive whole.
    `durable_log`: answers wait for their decision's commit (server/app.py, DurableAnswers).
    """

    max_batch: int = 64
    max_wait_us: int = 500
    max_queue: int = 4096
    # One batch at a time per deployment: the engine's batch path is mostly GIL-holding Python
    # around the nogil kernels, so a second concurrent batch mostly contends for the GIL; measured
    # on 2 cores at concurrency 64 it gave smaller batches and lower throughput (see the report).
    max_in_flight: int = 1
    # Admission (server/batcher.py, Admission): scoring requests worked on at once (64: the
    # concurrency that gave the most answers per second here), and how many more may wait their turn
    # (for up to half of request_timeout_s) before new ones are refused with 503 at once.
    max_active_requests: int = 64
    max_waiting_requests: int = 4096
    threads: int = 2
    request_timeout_s: float = 5.0
    retry_after_s: float = 1.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_rows: int = 10_000
    max_arrow_rows: int = 1_000_000
    # A proxy or a load generator brings many clients through one address: the cap is for one
    # misbehaving address, not a rate limit.
    max_connections_per_client: int = 256
    read_timeout_s: float = 10.0
    # Answer a scoring request only once its decision is committed to the decision log (server
    # wide; a manifest's `log.durable` asks the same for one model). See the README.
    durable_log: bool = False
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_in_flight", "threads", "max_body_bytes", "max_rows", "max_arrow_rows",
                     "max_connections_per_client", "max_active_requests", "max_waiting_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_us < 0 or self.request_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("max_wait_us must be >= 0, request_timeout_s and read_timeout_s > 0")
