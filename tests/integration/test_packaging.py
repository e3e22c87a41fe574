"""The package as a wheel: everything it reads at run time is inside it, and installed into a
fresh virtualenv (not the editable checkout) its console script and `python -m stream_infer`
validate the packaged demo config against a real broker from a folder outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from stream_infer.kafka.admin import create_topics

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FILES = [
    "stream_infer/configs/demo.toml",
    "stream_infer/schemas/engines-event.v1.json",
    "stream_infer/schemas/machines-event.v1.json",
    "stream_infer/schemas/prediction.v1.json",
    "stream_infer/schemas/alert.v1.json",
    "stream_infer/models/engines_rul.onnx",
    "stream_infer/models/machines_failure.onnx",
    "stream_infer/tools/devkafka/pom.xml",
    "stream_infer/__main__.py",
    "stream_infer/datasets/cmapss/test_FD001.txt",
    "stream_infer/datasets/cmapss/RUL_FD001.txt",
    "stream_infer/datasets/ai4i2020/ai4i2020.csv",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the Dockerfile copies (the build leaves build/ and
    *.egg-info beside its sources; stale files there must not reach a later wheel)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "stream_infer", source / "stream_infer", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(out.glob("stream_infer-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_file_read_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in RUNTIME_FILES if f not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "schemas/", "deploy/"))], "files outside the package"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; its dependencies come from this one's
    site-packages through a path file (which does not run that folder's editable-install hook,
    so `stream_infer` can only come from the wheel)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def test_installed_it_validates_the_packaged_demo_config_against_a_broker(
    installed: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    python = installed / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import stream_infer; print(stream_infer.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.strip()
    assert where.startswith(str(installed)) and not where.startswith(str(ROOT)), where
    packaged = Path(where).parent / "configs" / "demo.toml"
    create_topics(kafka_bootstrap, ["engines.telemetry", "machines.readings", "payments.transactions"], partitions=1)
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    for command in ([str(installed / "bin" / "stream-infer")], [str(python), "-m", "stream_infer"]):
        check = subprocess.run(
            [*command, "worker", "-c", str(packaged), "--check", "--web-port", "0", "--data-dir", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
            env=env,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "ok: 3 pipeline(s) valid: engines, machines, transactions" in check.stdout


def test_a_config_error_is_one_line_not_a_traceback(installed: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap_servers = 5\n")
    run = subprocess.run(
        [str(installed / "bin" / "python"), "-m", "stream_infer", "worker", "-c", str(bad), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr, run.stderr
