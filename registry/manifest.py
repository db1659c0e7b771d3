"""The model manifest: a frozen, strictly validated msgspec schema for one model version's metadata.

A manifest says what a model needs (inputs), where an entity's raw data lives (entity store),
how raw inputs become features (transforms), which artifact scores them (model), how a score
becomes a decision (decision) and how the answer is named (output). JSON keys are kebab-case.
"""

from __future__ import annotations

from typing import Literal, Union

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


Store = Union[ParquetStore, ArrowStore, SqliteStore, PostgresStore]


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
TRANSFORM_KINDS = tuple(t.__struct_config__.tag for t in Transform.__args__)


# --- model ------------------------------------------------------------------------------------


class ModelSpec(msgspec.Struct, **_STRICT):
    """The artifact (relative to the version folder) and how its features map from columns."""

    format: Literal["lightgbm", "linear"]
    artifact: str
    # model feature name -> column (raw input or transform output); unnamed features map by name
    features: dict[str, str] = {}
    # which raw output is "the score": "auto" (the prediction for one output, the top class's
    # probability for several), or a class index
    score: Literal["auto"] | int = "auto"
    # LightGBM only: which kernel scores it (scoreline.load_lightgbm's `compile`): "generic" (the
    # shared kernel), "model" (this model's trees compiled to machine code at load, cached) or
    # "auto" ("model" for models of at most treecode.MAX_AUTO_LEAVES leaves)
    compile: Literal["generic", "model", "auto"] = "generic"


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


class Manifest(msgspec.Struct, **_STRICT):
    """Everything needed to serve one version of one model."""

    model_id: str
    inputs: list[Input]
    entity: Entity
    model: ModelSpec
    decision: Decision
    transforms: list[Transform] = []
    output: Output = Output()
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
    if m.model.compile != "generic" and m.model.format != "lightgbm":
        raise SchemaError(f"compile {m.model.compile!r} applies to lightgbm models only; a {m.model.format} "
                          "model has one kernel", path="$.model.compile")
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
