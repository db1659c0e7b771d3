"""The model manifest: a frozen, strictly validated msgspec schema for one model version's metadata.

A manifest says what a model needs (inputs), where an entity's raw data lives (entity store),
how raw inputs become features (transforms), which artifact scores them (model), how a score
becomes a decision (decision) and how the answer is named (output). JSON keys are kebab-case.
"""

from __future__ import annotations

from typing import Literal, Union, cast, get_args

import msgspec

from scoreline.errors import SchemaError

__all__ = ["Manifest", "decode_manifest", "encode_manifest", "TRANSFORM_KINDS"]

_STRICT = dict(frozen=True, forbid_unknown_fields=True, rename="kebab")

Scalar = Union[bool, int, float, str]
InputType = Literal["int", "float", "string", "bool", "date", "timestamp"]


class Input(msgspec.Struct, **_STRICT):
    """One raw input: its type, whether it is required, its default, and its allowed values."""

    name: str
    type: InputType
    required: bool = True
    default: Scalar | None = None
    allowed: list[Scalar] | None = None
    minimum: float | None = None
    maximum: float | None = None
    allow_nan: bool = False
    # date and timestamp inputs: the first and last day allowed, "YYYY-MM-DD"; `latest` may be
    # "today" (the day the value is checked, UTC), so a date of birth cannot lie in the future
    earliest: str | None = None
    latest: str | None = None


# --- entity stores ----------------------------------------------------------------------------


class ParquetStore(msgspec.Struct, tag="parquet", tag_field="kind", **_STRICT):
    """Parquet file(s) loaded into memory with a key index; reloaded when the files change."""

    path: str
    key_column: str


class ArrowStore(msgspec.Struct, tag="arrow", tag_field="kind", **_STRICT):
    """An Arrow IPC file loaded into memory with a key index."""

    path: str
    key_column: str


class SqliteStore(msgspec.Struct, tag="sqlite", tag_field="kind", **_STRICT):
    """A SQLite table read through ADBC."""

    path: str
    table: str
    key_column: str


class PostgresStore(msgspec.Struct, tag="postgres", tag_field="kind", **_STRICT):
    """A PostgreSQL table read through ADBC (uri: postgresql://host:port/db)."""

    uri: str
    table: str
    key_column: str

# --- remote stores and remote models (issue 14) ------------------------------------------------
# Entities in Redis, a cache in front of any remote store, several stores joined by key, and a
# model that another server evaluates (engine/data/redis_store.py, storecache.py, models/remote.py).

ColumnType = Literal["int", "float", "string", "bool", "date", "timestamp"]


class Freshness(msgspec.Struct, **_STRICT):
    """A row whose `field` (epoch seconds or an ISO 8601 timestamp) is older than `max-age`
    seconds is stale: a per-row error ("error") or read as if absent, so inputs take their
    defaults ("default")."""

    field: str
    max_age: float
    stale: Literal["error", "default"] = "error"


class RedisStore(msgspec.Struct, tag="redis", tag_field="kind", **_STRICT):
    """One Redis hash per entity at `<key-prefix><key>`, its fields typed by `columns`.

    The password, if any, comes from the environment variable named by `password-env`, never
    from this file."""

    columns: dict[str, ColumnType]
    key_column: str
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = ""
    key_type: Literal["int", "string"] = "int"
    password_env: str | None = None
    timeout: float = 0.25
    freshness: Freshness | None = None


class CachedStore(msgspec.Struct, tag="cached", tag_field="kind", **_STRICT):
    """A small LRU cache with a time to live in front of a remote store (Redis, PostgreSQL,
    SQLite): at most `size` entities, each kept `ttl` seconds (absent entities too)."""

    store: Union[RedisStore, PostgresStore, SqliteStore]
    size: int = 10_000
    ttl: float = 5.0


class JoinStore(msgspec.Struct, tag="join", tag_field="kind", **_STRICT):
    """Several stores joined by the entity key: each column comes from the first store that has
    it; an entity is found when the first store has it ("first") or every store has it ("all")."""

    stores: list[Union[ParquetStore, ArrowStore, SqliteStore, PostgresStore, RedisStore, CachedStore]]
    found: Literal["first", "all"] = "first"


TensorType = Literal["FP64", "FP32", "INT64", "INT32", "BOOL", "BYTES"]


class RemoteTensor(msgspec.Struct, **_STRICT):
    """One input tensor of the remote model, filled from the model feature of the same name
    (model.features maps it from a column). BYTES tensors carry a string input's value (give its
    `categories`) or a date input as YYYY-MM-DD (`date: true`)."""

    name: str
    datatype: TensorType = "FP64"
    categories: list[str] | None = None
    date: bool = False


class Retry(msgspec.Struct, **_STRICT):
    """Retries with full-jitter exponential backoff, only of failures that are safe to repeat."""

    attempts: int = 3
    backoff: float = 0.01
    max_backoff: float = 0.2


class Breaker(msgspec.Struct, **_STRICT):
    """Open after `failures` failed calls in a row; after `reset` seconds let one probe through."""

    failures: int = 5
    reset: float = 5.0


class VersionFallback(msgspec.Struct, tag="version", tag_field="kind", **_STRICT):
    """Score with another (local) version of this model; its features must be among ours."""

    version: int


class DecisionFallback(msgspec.Struct, tag="decision", tag_field="kind", **_STRICT):
    """Answer this decision with no score."""

    decision: str


class ErrorFallback(msgspec.Struct, tag="error", tag_field="kind", **_STRICT):
    """A per-row error of kind "remote"."""


Fallback = Union[VersionFallback, DecisionFallback, ErrorFallback]


class RemoteSpec(msgspec.Struct, **_STRICT):
    """A model served elsewhere over the Open Inference Protocol v2 (REST).

    Secrets never live here: `token-env` names the environment variable holding a bearer token,
    `headers-env` maps header names to environment variables."""

    url: str
    name: str
    inputs: list[RemoteTensor]
    output: str
    version: str | None = None
    # send every input as one [n, len(inputs)] tensor of this name, in the order of `inputs`
    # (the one 2-D input of MLServer's and Triton's LightGBM, XGBoost and scikit-learn runtimes)
    matrix: str | None = None
    protocol: Literal["v2-rest"] = "v2-rest"
    objective: Literal["binary", "regression", "multiclass", "multiclassova"] = "binary"
    num_class: int = 1
    timeout: float = 1.0
    idempotent: bool = True
    retry: Retry = Retry()
    breaker: Breaker = Breaker()
    fallback: Fallback = ErrorFallback()
    token_env: str | None = None
    headers_env: dict[str, str] = {}


def _check_remote(m: Manifest) -> None:
    """A remote model names its endpoint and no artifact; a local one the reverse."""
    spec = m.model
    if (spec.format == "remote") != (spec.remote is not None):
        raise SchemaError('model.remote goes with format "remote" (and only with it)', path="$.model.remote")
    if spec.format != "remote":
        if not spec.artifact:
            raise SchemaError(f"a {spec.format} model needs its artifact", path="$.model.artifact")
        return
    r = cast(RemoteSpec, spec.remote)  # format "remote" implies a spec: checked above
    names = [t.name for t in r.inputs]
    if not names or len(set(names)) != len(names):
        raise SchemaError("model.remote.inputs must name each tensor once", path="$.model.remote.inputs")
    for i, t in enumerate(r.inputs):
        if t.datatype == "BYTES" and (t.categories is None) == (not t.date):
            raise SchemaError(f"BYTES tensor {t.name!r} needs either categories (a string input) or "
                              "date: true", path=f"$.model.remote.inputs[{i}]")
        if t.datatype != "BYTES" and (t.categories is not None or t.date):
            raise SchemaError(f"categories and date apply to BYTES tensors; {t.name!r} is {t.datatype}",
                              path=f"$.model.remote.inputs[{i}]")
    kinds = {t.datatype for t in r.inputs}
    if r.matrix is not None and (len(kinds) != 1 or kinds & {"BYTES", "BOOL"}):
        raise SchemaError("a matrix input carries numbers of one datatype: give every input the same "
                          "numeric datatype", path="$.model.remote.matrix")
    if r.timeout <= 0 or r.retry.attempts < 1 or r.breaker.failures < 1 or r.num_class < 1:
        raise SchemaError("timeout must be positive; retry.attempts, breaker.failures and num-class at "
                          "least 1", path="$.model.remote")
    if isinstance(r.fallback, VersionFallback) and not r.fallback.version >= 1:
        raise SchemaError("a fallback version is a version number (1 or more)", path="$.model.remote.fallback")


Store = Union[ParquetStore, ArrowStore, SqliteStore, PostgresStore, RedisStore, CachedStore,
              JoinStore]


class Entity(msgspec.Struct, **_STRICT):
    """The entity key in requests and the store its raw inputs are fetched from."""

    key: str
    key_type: Literal["int", "string"] = "int"
    store: Store | None = None
    # raw input name -> store column name, where they differ
    columns: dict[str, str] = {}


# --- feature transforms -----------------------------------------------------------------------
# Each transform reads one or two columns (raw inputs or earlier transforms' outputs) and writes a
# float64 feature column named `output`. They run in order.

_T = dict(tag_field="kind", **_STRICT)


class Passthrough(msgspec.Struct, tag="passthrough", **_T):
    input: str
    output: str


class AgeYears(msgspec.Struct, tag="age-years", **_T):
    """Whole years between a date input and the scoring date."""

    input: str
    output: str


class DaysSince(msgspec.Struct, tag="days-since", **_T):
    input: str
    output: str


class Vocabulary(msgspec.Struct, tag="vocabulary", **_T):
    """A category's position in `vocabulary`; an unseen value becomes `fallback` (None: missing)."""

    input: str
    output: str
    vocabulary: list[str]
    fallback: float | None = None


class OneHot(msgspec.Struct, tag="one-hot", **_T):
    """One 0/1 column per category, named `<output>=<category>`."""

    input: str
    output: str
    categories: list[str]


class Standardize(msgspec.Struct, tag="standardize", **_T):
    input: str
    output: str
    mean: float
    std: float


class MinMax(msgspec.Struct, tag="min-max", **_T):
    input: str
    output: str
    min: float
    max: float


class Log1p(msgspec.Struct, tag="log1p", **_T):
    input: str
    output: str


class Clip(msgspec.Struct, tag="clip", **_T):
    input: str
    output: str
    lower: float | None = None
    upper: float | None = None


class Bucketize(msgspec.Struct, tag="bucketize", **_T):
    """Index of the bucket: number of `edges` <= value (edges ascending)."""

    input: str
    output: str
    edges: list[float]


class FillMissing(msgspec.Struct, tag="fill-missing", **_T):
    input: str
    output: str
    value: float


class Ratio(msgspec.Struct, tag="ratio", **_T):
    """numerator / denominator; a zero denominator gives missing."""

    numerator: str
    denominator: str
    output: str


class Lookup(msgspec.Struct, tag="lookup", **_T):
    """A value from a table keyed by the input (as a string); a missing key gives `default`."""

    input: str
    output: str
    table: dict[str, float]
    default: float | None = None


Transform = Union[
    Passthrough, AgeYears, DaysSince, Vocabulary, OneHot, Standardize, MinMax, Log1p, Clip,
    Bucketize, FillMissing, Ratio, Lookup,
]
TRANSFORM_KINDS = tuple(t.__struct_config__.tag for t in get_args(Transform))


# --- model ------------------------------------------------------------------------------------


class ModelSpec(msgspec.Struct, **_STRICT):
    """The artifact (relative to the version folder) and how its features map from columns."""

    format: Literal["lightgbm", "linear", "remote"]
    # the file in the version folder (none for a remote model)
    artifact: str = ""
    # model feature name -> column (raw input or transform output); unnamed features map by name
    features: dict[str, str] = {}
    # which raw output is "the score": "auto" (the prediction for one output, the top class's
    # probability for several), or a class index
    score: Literal["auto"] | int = "auto"
    # LightGBM only: which kernel scores it (scoreline.load_lightgbm's `compile`): "auto" (the
    # default: every exact tier timed at load, the fastest serves each batch size, docs/treecode.md),
    # or a pinned tier: "generic" (the shared walk), "simd" (branch-free blocks of rows), "bins" (the
    # same on 16-bit bins; models without categorical splits) or "model"
    # (this model's trees compiled to machine code at load, cached)
    compile: Literal["auto", "generic", "simd", "bins", "model"] = "auto"
    # format "remote": where and how the model is called
    remote: RemoteSpec | None = None


# --- decision logic ---------------------------------------------------------------------------


class Band(msgspec.Struct, **_STRICT):
    """score >= min gives label (bands are tried in order; the first match wins)."""

    label: str
    min: float


class Bands(msgspec.Struct, tag="bands", tag_field="kind", **_STRICT):
    bands: list[Band]
    default: str


class Argmax(msgspec.Struct, tag="argmax", tag_field="kind", **_STRICT):
    """The top class's label (labels[i] for class i)."""

    labels: list[str]


class TopK(msgspec.Struct, tag="top-k", tag_field="kind", **_STRICT):
    """The k most probable classes' labels, best first, joined with ','."""

    labels: list[str]
    k: int


class Segment(msgspec.Struct, tag="segment", tag_field="kind", **_STRICT):
    """The top class's label, and a payload (e.g. a product SKU) looked up from that label."""

    labels: list[str]
    payload: dict[str, str]
    payload_field: str


# --- rule tables and reason codes (issue 15) ----------------------------------------------


class Reason(msgspec.Struct, **_STRICT):
    """A reason code given with a decision, e.g. code "R07", text "account balance too low"."""

    code: str
    text: str = ""


class Condition(msgspec.Struct, **_STRICT):
    """Bounds on one column: a numeric or date raw input (dates as days since 1970-01-01), a
    transform output, or "score". A missing value meets no condition."""

    input: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None


class Rule(msgspec.Struct, **_STRICT):
    """Gives `label` when every condition holds (no conditions: always), with its reason."""

    label: str
    when: list[Condition] = []
    reason: Reason | None = None


class RuleTable(msgspec.Struct, tag="rules", tag_field="kind", **_STRICT):
    """An ordered table of rules over inputs and the score; `default` when none fires.

    hit-policy "first": the first rule that fires gives the label and its reason; "collect": the
    first gives the label, and every rule that fires gives its reason.
    """

    rules: list[Rule]
    default: str
    hit_policy: Literal["first", "collect"] = "first"


class InputReasons(msgspec.Struct, **_STRICT):
    """An input's reason per direction: `up` when it raised the score, `down` when it lowered it."""

    up: Reason | None = None
    down: Reason | None = None


class Explain(msgspec.Struct, **_STRICT):
    """Reason codes from feature contributions (engine/pipeline/explain.py).

    k: how many reasons an answer carries when the request does not say (0: none);
    rank: which contributions make reasons ("abs": the largest either way, "up": those raising
    the score, e.g. a decline's reasons when the score is a risk, "down": those lowering it);
    reasons: raw input name -> its codes; means: a linear model's training feature means (by
    model feature name), the reference its contributions are measured from.
    """

    k: int = 0
    rank: Literal["abs", "up", "down"] = "abs"
    reasons: dict[str, InputReasons] = {}
    means: dict[str, float] | None = None


Decision = Union[Bands, Argmax, TopK, Segment, RuleTable]


class Output(msgspec.Struct, **_STRICT):
    """Names of the answer's fields: the contract that stays the same across versions."""

    score: str = "score"
    decision: str = "application-decision"


class LogSpec(msgspec.Struct, **_STRICT):
    """How this model's decisions are logged: `durable` answers a request only once its decision
    row is committed to the decision log (see the README's decision log section)."""

    durable: bool = False


class Manifest(msgspec.Struct, **_STRICT):
    """Everything needed to serve one version of one model."""

    model_id: str
    inputs: list[Input]
    entity: Entity
    model: ModelSpec
    decision: Decision
    transforms: list[Transform] = []
    output: Output = Output()
    log: LogSpec = LogSpec()
    description: str = ""
    explain: Explain | None = None


_decoder = msgspec.json.Decoder(Manifest)
_encoder = msgspec.json.Encoder()


def decode_manifest(data: bytes | str) -> Manifest:
    """Decode and validate a manifest from JSON; a bad field raises SchemaError with its path."""
    try:
        manifest = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else None
        raise SchemaError(f"Invalid manifest: {text}", path=path) from None
    except msgspec.DecodeError as exc:
        raise SchemaError(f"Manifest is not valid JSON: {exc}") from None
    _check_semantics(manifest)
    return manifest


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest as JSON bytes (kebab-case keys), for writing to the registry."""
    return _encoder.encode(manifest)


def _check_semantics(m: Manifest) -> None:
    """Cross-field checks msgspec's types cannot express."""
    names = [i.name for i in m.inputs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SchemaError(f"duplicate input {name!r}", path=f"$.inputs[{i}].name")
        if name == m.entity.key:
            raise SchemaError(f"input {name!r} has the entity key's name", path=f"$.inputs[{i}].name")
    known = set(names)
    for i, t in enumerate(m.transforms):
        sources = (t.numerator, t.denominator) if isinstance(t, Ratio) else (t.input,)
        for s in sources:
            if s not in known:
                raise SchemaError(
                    f"transform reads {s!r}, which is neither an input nor an earlier output",
                    path=f"$.transforms[{i}]",
                )
        if isinstance(t, OneHot):
            known.update(f"{t.output}={c}" for c in t.categories)
        else:
            known.add(t.output)
    for feature, column in m.model.features.items():
        if column not in known:
            raise SchemaError(
                f"model feature {feature!r} maps from unknown column {column!r}",
                path=f"$.model.features.{feature}",
            )
    if m.model.compile != "auto" and m.model.format != "lightgbm":
        raise SchemaError(f"compile {m.model.compile!r} applies to lightgbm models only; a {m.model.format} "
                          "model has one kernel", path="$.model.compile")
    _check_remote(m)
    if isinstance(m.decision, Bands):
        mins = [b.min for b in m.decision.bands]
        if mins != sorted(mins, reverse=True):
            raise SchemaError("bands must be ordered by descending min", path="$.decision.bands")
    if isinstance(m.decision, TopK) and not 1 <= m.decision.k <= len(m.decision.labels):
        raise SchemaError("k must be between 1 and the number of labels", path="$.decision.k")
    if m.explain is not None:
        _check_explain(m.explain, set(names))


def _check_explain(e: Explain, inputs: set[str]) -> None:
    if e.k < 0:
        raise SchemaError(f"explain.k must be 0 or more, got {e.k}", path="$.explain.k")
    for name in e.reasons:
        if name not in inputs:
            raise SchemaError(f"explain.reasons names {name!r}, which is not an input",
                              path=f"$.explain.reasons.{name}")
