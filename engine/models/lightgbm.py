"""LightGBM text model (file or model_to_string) -> validated, frozen IR; no lightgbm import needed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scoreline.errors import ModelFormatError
from scoreline.kernels import rules

__all__ = ["TreeIR", "EnsembleIR", "parse_lightgbm", "read_lightgbm"]

KNOWN_VERSIONS = ("v2", "v3", "v4")

# Keys of a tree block that prediction needs, with their dtype; the others (gains, weights,
# counts, internal values) are skipped unparsed, which is most of the load time saved.
_TREE_ARRAYS = {
    "split_feature": np.int64,
    "threshold": np.float64,
    "decision_type": np.int64,
    "left_child": np.int64,
    "right_child": np.int64,
    "leaf_value": np.float64,
    "cat_boundaries": np.int64,
    "cat_threshold": np.int64,
    "leaf_const": np.float64,
    "num_features": np.int64,
    "leaf_features": np.int64,
    "leaf_coeff": np.float64,
    # Data counts, for pred_contrib only (TreeSHAP's covers); optional: a file without them scores.
    "leaf_count": np.float64,
    "internal_count": np.float64,
}


@dataclass(frozen=True, eq=False)
class TreeIR:
    """One tree exactly as LightGBM stores it (nodes 0..num_leaves-2, child < 0 is leaf ~child)."""

    num_leaves: int
    split_feature: np.ndarray  # int64 (num_leaves - 1,)
    threshold: np.ndarray  # float64; for categorical nodes the index into cat_boundaries
    decision_type: np.ndarray  # int64: bit 0 categorical, bit 1 default left, bits 2-3 missing type
    left_child: np.ndarray  # int64
    right_child: np.ndarray  # int64
    leaf_value: np.ndarray  # float64 (num_leaves,)
    cat_boundaries: np.ndarray  # int64 (num_cat + 1,), word offsets into cat_threshold
    cat_threshold: np.ndarray  # uint32 bitset words
    is_linear: bool = False
    leaf_const: np.ndarray | None = None  # float64 (num_leaves,) when is_linear
    leaf_features: tuple[np.ndarray, ...] = ()  # per leaf, int64 feature indices
    leaf_coeff: tuple[np.ndarray, ...] = ()  # per leaf, float64 coefficients
    depth: int = 0  # longest root-to-leaf path (0 for a single leaf), computed while validating
    leaf_count: np.ndarray | None = None  # float64 (num_leaves,) training rows per leaf, when written
    internal_count: np.ndarray | None = None  # float64 (num_leaves - 1,) training rows per split node


@dataclass(frozen=True, eq=False)
class EnsembleIR:
    """A whole LightGBM model: header fields, trees in file order, trailer sections."""

    version: str
    num_class: int
    num_tree_per_iteration: int
    max_feature_idx: int
    objective: str  # first word of the objective line ("binary", "multiclass", ...); "" if absent
    objective_args: dict[str, str]  # "sigmoid" -> "1", "sqrt" -> "" ...
    average_output: bool
    feature_names: tuple[str, ...]
    feature_infos: tuple[str, ...]
    trees: tuple[TreeIR, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    pandas_categorical: list | None = None

    @property
    def num_features(self) -> int:
        return self.max_feature_idx + 1


def read_lightgbm(path_or_text: str | bytes | Path) -> EnsembleIR:
    """Parse a model given as a file path or as the model text itself (``Booster.model_to_string``)."""
    if isinstance(path_or_text, bytes):
        path_or_text = path_or_text.decode("utf-8")
    if isinstance(path_or_text, str) and ("\n" in path_or_text or path_or_text.startswith("tree")):
        return parse_lightgbm(path_or_text)
    path = Path(path_or_text)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFormatError(f"LightGBM model file {str(path)!r} does not exist", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"cannot read LightGBM model file {str(path)!r}: {exc}", path=str(path)) from None
    return parse_lightgbm(text)


def parse_lightgbm(text: str) -> EnsembleIR:
    """Parse and validate LightGBM's text format; raise ModelFormatError naming the tree and key."""
    if not text.startswith("tree"):
        raise ModelFormatError("Ill-formed LightGBM model: the text does not start with 'tree'", path="header")
    end = text.rfind("\nend of trees")  # from the end: the trailer is short, the trees are not
    if end < 0:
        raise ModelFormatError("Ill-formed LightGBM model: 'end of trees' is missing (truncated file?)", path="trees")
    first_tree = text.find("\nTree=", 0, end)
    header_text = text[: first_tree if first_tree >= 0 else end]
    header = _parse_header(header_text)
    trailer = text[end:]

    num_features = header["max_feature_idx"] + 1
    trees = []
    if first_tree >= 0:
        blocks = text[first_tree + 1 : end].split("\nTree=")
        heads = [_tree_head(block if i == 0 else "Tree=" + block, i) for i, block in enumerate(blocks)]
        batched, flat = _parse_batched(heads)
        depths = _screen_forest(heads, flat, num_features)
        for position, head in enumerate(heads):
            depth = None if depths is None else int(depths[position])
            trees.append(_parse_tree(head, position, num_features, batched, depth))
    k = header["num_tree_per_iteration"]
    if len(trees) % k != 0:
        raise ModelFormatError(
            f"Ill-formed LightGBM model: {len(trees)} trees is not a multiple of "
            f"num_tree_per_iteration={k}",
            path="num_tree_per_iteration",
        )
    sizes = header.get("tree_sizes")
    if sizes is not None and len(sizes) != len(trees):
        raise ModelFormatError(
            f"Ill-formed LightGBM model: tree_sizes lists {len(sizes)} trees but {len(trees)} were found",
            path="tree_sizes",
        )
    return EnsembleIR(
        version=header["version"],
        num_class=header["num_class"],
        num_tree_per_iteration=k,
        max_feature_idx=header["max_feature_idx"],
        objective=header["objective"],
        objective_args=header["objective_args"],
        average_output=header["average_output"],
        feature_names=header["feature_names"],
        feature_infos=header["feature_infos"],
        trees=tuple(trees),
        parameters=_parse_parameters(trailer),
        pandas_categorical=_parse_pandas_categorical(trailer),
    )


def _fail(message: str, path: str) -> ModelFormatError:
    return ModelFormatError(f"Ill-formed LightGBM model: {message}", path=path)


def _key_values(text: str, where: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            values[line] = ""  # flags such as "average_output"
            continue
        if key in values:
            raise _fail(f"{where} repeats the key {key!r}", f"{where}.{key}")
        values[key] = value
    return values


def _int(values: dict[str, str], key: str, where: str, minimum: int) -> int:
    raw = values.get(key)
    if raw is None:
        raise _fail(f"{where} lacks {key}", f"{where}.{key}")
    try:
        value = int(raw)
    except ValueError:
        raise _fail(f"{where} has {key}={raw!r}, expected an integer", f"{where}.{key}") from None
    if value < minimum:
        raise _fail(f"{where} has {key}={value}, expected at least {minimum}", f"{where}.{key}")
    return value


def _parse_header(text: str) -> dict:
    values = _key_values(text, "header")
    version = values.get("version")
    if version is None:
        raise _fail("the header lacks version", "header.version")
    if version not in KNOWN_VERSIONS:
        raise ModelFormatError(
            f"Unsupported LightGBM model format version {version!r}; expected one of {', '.join(KNOWN_VERSIONS)}",
            path="header.version",
        )
    num_class = _int(values, "num_class", "header", 1)
    per_iteration = _int(values, "num_tree_per_iteration", "header", 1)
    if per_iteration != num_class:
        raise _fail(
            f"num_tree_per_iteration={per_iteration} differs from num_class={num_class}",
            "header.num_tree_per_iteration",
        )
    max_feature_idx = _int(values, "max_feature_idx", "header", 0)
    names = tuple(values.get("feature_names", "").split())
    if len(names) != max_feature_idx + 1:
        raise _fail(
            f"feature_names lists {len(names)} names, expected max_feature_idx+1 = {max_feature_idx + 1}",
            "header.feature_names",
        )
    infos = tuple(values.get("feature_infos", "").split())
    if infos and len(infos) != len(names):
        raise _fail(f"feature_infos lists {len(infos)} entries, expected {len(names)}", "header.feature_infos")
    words = values.get("objective", "").split()
    objective = words[0] if words else ""
    objective_args = {}
    for word in words[1:]:
        key, _, value = word.partition(":")
        objective_args[key] = value
    sizes = values.get("tree_sizes")
    return {
        "version": version,
        "num_class": num_class,
        "num_tree_per_iteration": per_iteration,
        "max_feature_idx": max_feature_idx,
        "objective": objective,
        "objective_args": objective_args,
        "average_output": "average_output" in values,
        "feature_names": names,
        "feature_infos": infos,
        "tree_sizes": sizes.split() if sizes is not None else None,
    }


def _array(values: dict[str, str], key: str, where: str, length: int | None) -> np.ndarray:
    raw = values.get(key)
    if raw is None:
        raise _fail(f"{where} lacks {key}", f"{where}.{key}")
    dtype = _TREE_ARRAYS[key]
    try:
        # One C call per list; an unparsable token raises ValueError. Integers too large for
        # int64 saturate and are caught by the range checks that follow.
        array = np.fromstring(raw, dtype=dtype, sep=" ")
    except (ValueError, OverflowError):
        kind = "integers" if dtype is np.int64 else "numbers"
        raise _fail(f"{where} has a {key} that is not a list of {kind}", f"{where}.{key}") from None
    if length is not None and array.shape[0] != length:
        raise _fail(f"{where} has {array.shape[0]} values in {key}, expected {length}", f"{where}.{key}")
    return array


# Keys parsed for all trees at once: one fromstring call per key instead of one per tree.
_BATCHED = ("split_feature", "threshold", "decision_type", "left_child", "right_child", "leaf_value")
_COUNTS = ("leaf_count", "internal_count")  # batched too, but optional (see _parse_counts)


def _tree_head(block: str, position: int) -> tuple[dict[str, str], int]:
    where = f"tree {position}"
    values = _key_values(block, where)
    if values.get("Tree") != str(position):
        raise _fail(f"tree block {position} is labelled Tree={values.get('Tree')}", where)
    return values, _int(values, "num_leaves", where, 1)


def _parse_batched(heads: list[tuple[dict[str, str], int]]) -> tuple[dict, dict]:
    """Each batched key of every tree, parsed in one call: (per-tree pieces, flat array) by key.

    When the joined text does not parse or the counts disagree, nothing is returned for that
    key and the trees parse it one by one, so the error names the tree at fault.
    """
    out, flats = {}, {}
    for key in _BATCHED + _COUNTS:
        expected = [n if key in ("leaf_value", "leaf_count") else (n - 1 if n > 1 else 0) for _, n in heads]
        raws = [values.get(key) for values, n in heads]
        if any(raw is None for raw, count in zip(raws, expected) if count):
            continue
        joined = " ".join(raw for raw, count in zip(raws, expected) if count)
        try:
            flat = np.fromstring(joined, dtype=_TREE_ARRAYS[key], sep=" ")
        except ValueError:
            continue
        if flat.size != sum(expected):
            continue
        out[key] = np.split(flat, np.cumsum(expected)[:-1])
        flats[key] = flat
    return out, flats


def _screen_forest(heads, flat: dict[str, np.ndarray], num_features: int) -> np.ndarray | None:
    """Every tree's depth when the whole forest passes the split and structure checks at once.

    The same conditions as _check_splits and _check_structure, over all trees' arrays together
    (a few dozen numpy calls instead of a few dozen per tree: ~0.25 s less for 1000 x 255).
    Returns None when anything fails or is missing; the per-tree checks then find the tree and
    key to name.
    """
    if any(key not in flat for key in _BATCHED):
        return None
    leaves = np.array([n for _, n in heads], dtype=np.int64)
    internal = leaves - 1
    try:
        num_cat = np.array([int(values.get("num_cat", "")) for values, _ in heads], dtype=np.int64)
    except ValueError:
        return None
    sf, thr, dt = flat["split_feature"], flat["threshold"], flat["decision_type"]
    left, right = flat["left_child"], flat["right_child"]
    tree_of = np.repeat(np.arange(len(heads)), internal)
    node_off = np.concatenate(([0], np.cumsum(internal)[:-1]))
    leaf_off = np.concatenate(([0], np.cumsum(leaves)[:-1]))
    if ((sf < 0) | (sf >= num_features)).any() or np.isnan(thr).any():
        return None
    if (~rules.valid_decision(dt)).any():
        return None
    categorical = rules.is_categorical(dt)
    if categorical.any():
        index = thr[categorical]
        if not ((index >= 0) & (index < num_cat[tree_of[categorical]]) & (index == np.floor(index))).all():
            return None
    nodes_here, leaves_here = internal[tree_of], leaves[tree_of]
    for children in (left, right):
        if ((children >= nodes_here) | (children < -leaves_here) | (children == 0)).any():
            return None
    children = np.concatenate((left, right))
    parent = np.concatenate((np.arange(tree_of.size), np.arange(tree_of.size)))
    owner = np.concatenate((tree_of, tree_of))
    is_node = children >= 0
    child = node_off[owner[is_node]] + children[is_node]
    roots = node_off[internal > 0]
    expected = np.ones(tree_of.size, dtype=np.int64)
    expected[roots] = 0
    if not np.array_equal(np.bincount(child, minlength=tree_of.size), expected):
        return None
    leaf = leaf_off[owner[~is_node]] + ~children[~is_node]
    expected = np.ones(int(leaves.sum()), dtype=np.int64)
    expected[leaf_off[internal == 0]] = 0  # a single-leaf tree's leaf has no parent
    if not np.array_equal(np.bincount(leaf, minlength=expected.size), expected):
        return None
    up = np.arange(tree_of.size)
    up[child] = parent[is_node]
    dist = np.ones(tree_of.size, dtype=np.int64)
    dist[roots] = 0
    for _ in range(max(1, int(internal.max(initial=1)).bit_length())):
        dist = dist + dist[up]
        up = up[up]
    if not np.array_equal(up, node_off[tree_of]):
        return None  # a cycle that never reaches its root
    leaf_depth = np.zeros(expected.size, dtype=np.int64)
    leaf_depth[leaf] = dist[parent[~is_node]] + 1
    return np.maximum.reduceat(leaf_depth, leaf_off) if leaf_off.size else np.zeros(0, np.int64)


def _parse_tree(head, position: int, num_features: int, batched: dict[str, list[np.ndarray]],
                depth: int | None) -> TreeIR:
    """One tree's IR; ``depth`` is given when _screen_forest already checked its splits."""
    where = f"tree {position}"
    values, num_leaves = head
    num_cat = _int(values, "num_cat", where, 0)
    is_linear = values.get("is_linear", "0") not in ("0", "")
    internal = num_leaves - 1

    def array(key: str, length: int) -> np.ndarray:
        parsed = batched.get(key)
        if parsed is not None and values.get(key) is not None:
            return parsed[position]
        return _array(values, key, where, length)

    leaf_value = array("leaf_value", num_leaves)
    if internal == 0:
        # A single leaf: LightGBM writes the split arrays empty and never reads them.
        empty_i = np.zeros(0, dtype=np.int64)
        split_feature = decision_type = left = right = empty_i
        threshold = np.zeros(0, dtype=np.float64)
    else:
        split_feature = array("split_feature", internal)
        threshold = array("threshold", internal)
        decision_type = array("decision_type", internal)
        left = array("left_child", internal)
        right = array("right_child", internal)
    if num_cat > 0:
        boundaries = _array(values, "cat_boundaries", where, num_cat + 1)
        words = _array(values, "cat_threshold", where, None)
    else:
        boundaries = np.zeros(1, dtype=np.int64)
        words = np.zeros(0, dtype=np.int64)
    if depth is None:
        _check_splits(where, num_features, split_feature, threshold, decision_type, num_cat)
        depth = _check_structure(where, num_leaves, left, right)
    if num_cat > 0:
        _check_categories(where, boundaries, words)
    linear = _parse_linear(values, where, num_leaves, num_features) if is_linear else None
    counts = _parse_counts(values, array, where, num_leaves)
    return TreeIR(
        num_leaves=num_leaves,
        split_feature=split_feature,
        threshold=threshold,
        decision_type=decision_type,
        left_child=left,
        right_child=right,
        leaf_value=leaf_value,
        cat_boundaries=boundaries,
        cat_threshold=words.astype(np.uint32),
        is_linear=is_linear,
        leaf_const=linear[0] if linear else None,
        leaf_features=linear[1] if linear else (),
        leaf_coeff=linear[2] if linear else (),
        depth=depth,
        leaf_count=counts[0] if counts else None,
        internal_count=counts[1] if counts else None,
    )


def _parse_counts(values, array, where, num_leaves) -> tuple[np.ndarray, np.ndarray] | None:
    """leaf_count and internal_count when the tree has them (LightGBM always writes them;
    hand-made files may not), else None; negative counts are refused."""
    internal = num_leaves - 1
    if values.get("leaf_count") is None or (internal and values.get("internal_count") is None):
        return None
    leaf = array("leaf_count", num_leaves)
    nodes = array("internal_count", internal) if internal else np.zeros(0)
    for key, counts in (("leaf_count", leaf), ("internal_count", nodes)):
        if not (counts >= 0).all():
            raise _fail(f"{where} has a negative or NaN {key}", f"{where}.{key}")
    return leaf, nodes


def _check_splits(where, num_features, split_feature, threshold, decision_type, num_cat) -> None:
    if split_feature.size == 0:
        return
    bad = np.flatnonzero((split_feature < 0) | (split_feature >= num_features))
    if bad.size:
        raise _fail(
            f"node {bad[0]} splits on feature {split_feature[bad[0]]}, expected 0..{num_features - 1}",
            f"{where}.split_feature",
        )
    bad = np.flatnonzero(~rules.valid_decision(decision_type))
    if bad.size:
        raise _fail(f"node {bad[0]} has decision_type={decision_type[bad[0]]}", f"{where}.decision_type")
    if np.isnan(threshold).any():
        raise _fail(f"node {np.flatnonzero(np.isnan(threshold))[0]} has a NaN threshold", f"{where}.threshold")
    categorical = rules.is_categorical(decision_type)
    if categorical.any():
        index = threshold[categorical]
        ok = (index >= 0) & (index < num_cat) & (index == np.floor(index))
        if not ok.all():
            node = np.flatnonzero(categorical)[np.flatnonzero(~ok)[0]]
            raise _fail(
                f"categorical node {node} points at category set {threshold[node]}, expected 0..{num_cat - 1}",
                f"{where}.threshold",
            )


def _check_categories(where, boundaries, words) -> None:
    if boundaries[0] != 0 or (np.diff(boundaries) < 0).any() or boundaries[-1] != words.size:
        raise _fail(
            f"cat_boundaries must rise from 0 to the {words.size} words of cat_threshold",
            f"{where}.cat_boundaries",
        )
    if words.size and ((words < 0) | (words > 0xFFFFFFFF)).any():
        raise _fail("cat_threshold words must be 32-bit unsigned integers", f"{where}.cat_threshold")


def _check_structure(where: str, num_leaves: int, left: np.ndarray, right: np.ndarray) -> int:
    """Every node and leaf reachable from the root exactly once (a tree, no cycles); return depth."""
    internal = num_leaves - 1
    if internal == 0:
        return 0
    for key, children in (("left_child", left), ("right_child", right)):
        bad = np.flatnonzero((children >= internal) | (children < -num_leaves) | (children == 0))
        if bad.size:
            raise _fail(
                f"node {bad[0]} has child {children[bad[0]]}, expected 1..{internal - 1} or -1..-{num_leaves}",
                f"{where}.{key}",
            )
    children = np.concatenate((left, right))
    parents = np.concatenate((np.arange(internal), np.arange(internal)))
    is_node = children >= 0
    node_refs = np.bincount(children[is_node], minlength=internal)
    leaf_refs = np.bincount(~children[~is_node], minlength=num_leaves)
    if node_refs.max() > 1 or leaf_refs.max() > 1:
        twice = f"node {np.argmax(node_refs)}" if node_refs.max() > 1 else f"leaf {np.argmax(leaf_refs)}"
        raise _fail(f"{twice} is reached twice (the children form a graph, not a tree)", f"{where}.left_child")
    if node_refs[1:].min(initial=1) == 0 or leaf_refs.min() == 0:
        raise _fail("some nodes or leaves are not reachable from the root", f"{where}.left_child")
    # Each node now has one parent; pointer jumping finds every node's depth in log2(n) rounds,
    # and a node that never reaches the root sits on a cycle.
    up = np.zeros(internal, dtype=np.int64)
    up[children[is_node]] = parents[is_node]
    dist = np.ones(internal, dtype=np.int64)
    dist[0] = 0
    for _ in range(max(1, int(internal).bit_length())):
        dist = dist + dist[up]
        up = up[up]
    if up.any():
        raise _fail("some nodes form a cycle that never reaches the root", f"{where}.left_child")
    return int(dist[parents[~is_node]].max()) + 1


def _parse_linear(values, where, num_leaves, num_features):
    leaf_const = _array(values, "leaf_const", where, num_leaves)
    counts = _array(values, "num_features", where, num_leaves)
    if (counts < 0).any():
        raise _fail("num_features has a negative count", f"{where}.num_features")
    total = int(counts.sum())
    features = _array(values, "leaf_features", where, total)
    coeff = _array(values, "leaf_coeff", where, total)
    if features.size and ((features < 0) | (features >= num_features)).any():
        raise _fail(f"leaf_features names a feature outside 0..{num_features - 1}", f"{where}.leaf_features")
    splits = np.cumsum(counts)[:-1]
    return leaf_const, tuple(np.split(features, splits)), tuple(np.split(coeff, splits))


def _parse_parameters(trailer: str) -> dict[str, str]:
    start = trailer.find("\nparameters:")
    if start < 0:
        return {}
    stop = trailer.find("\nend of parameters", start)
    section = trailer[start : stop if stop >= 0 else len(trailer)]
    params = {}
    for line in section.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]") and ":" in line:
            key, _, value = line[1:-1].partition(":")
            params[key.strip()] = value.strip()
    return params


def _parse_pandas_categorical(trailer: str):
    start = trailer.rfind("\npandas_categorical:")
    if start < 0:
        return None
    line = trailer[start + len("\npandas_categorical:") :].split("\n", 1)[0].strip()
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(f"pandas_categorical is not valid JSON ({exc.msg})", "pandas_categorical") from None
    if value is not None and not (isinstance(value, list) and all(isinstance(v, list) for v in value)):
        raise _fail("pandas_categorical must be null or a list of lists", "pandas_categorical")
    return value


def categorical_features(ir: EnsembleIR) -> tuple[int, ...]:
    """Features LightGBM treats as categorical: used in a categorical split or declared so."""
    found = set()
    for tree in ir.trees:
        found.update(tree.split_feature[rules.is_categorical(tree.decision_type)].tolist())
    declared = ir.parameters.get("categorical_feature", "")
    names = {name: i for i, name in enumerate(ir.feature_names)}
    for item in declared.removeprefix("name:").split(","):
        item = item.strip()
        if item.lstrip("-").isdigit() and 0 <= int(item) < ir.num_features:
            found.add(int(item))
        elif item in names:
            found.add(names[item])
    return tuple(sorted(found))


def pandas_categories(ir: EnsembleIR) -> dict[int, tuple]:
    """Map pandas_categorical (one category list per pandas category column, in column order)
    to feature indices.

    The model file does not say which columns were pandas categories. Unordered ones became
    LightGBM categorical features; ordered ones became numeric features holding codes 0..n-1.
    When the counts agree the lists map in order onto the categorical features; otherwise the
    one order-preserving assignment whose extra features hold plausible codes is used, and an
    ambiguous file is refused rather than guessed.
    """
    lists = ir.pandas_categorical
    if not lists:
        return {}
    cats = categorical_features(ir)
    if len(cats) == len(lists):
        return {f: tuple(values) for f, values in zip(cats, lists)}
    required = set(cats)

    def plausible(feature: int, count: int) -> bool:
        if feature in required:
            return True
        info = ir.feature_infos[feature] if ir.feature_infos else "none"
        if info == "none":
            return True
        if not (info.startswith("[") and info.endswith("]")):
            return False
        low, _, high = info[1:-1].partition(":")
        try:
            low_v, high_v = float(low), float(high)
        except ValueError:
            return False
        return low_v >= 0 and high_v <= count - 1 and low_v == math.floor(low_v) and high_v == math.floor(high_v)

    solutions: list[tuple[int, ...]] = []

    def search(list_index: int, feature: int, chosen: tuple[int, ...]) -> None:
        if len(solutions) > 1:
            return
        if list_index == len(lists):
            if required.issubset(chosen):
                solutions.append(chosen)
            return
        for f in range(feature, ir.num_features):
            skipped_required = any(r in required for r in range(feature, f))
            if skipped_required:
                break
            if plausible(f, len(lists[list_index])):
                search(list_index + 1, f + 1, chosen + (f,))

    search(0, 0, ())
    if len(solutions) != 1:
        raise _fail(
            f"pandas_categorical lists {len(lists)} category columns but the model has {len(cats)} "
            f"categorical features, and they cannot be matched to feature indices unambiguously",
            "pandas_categorical",
        )
    return {f: tuple(values) for f, values in zip(solutions[0], lists)}
