"""The bundled public data sets (files beside this module; sources and licenses in README.md):

* ``cmapss/{train,test}_FD001.txt`` and ``cmapss/RUL_FD001.txt`` (NASA C-MAPSS, FD001);
* ``ai4i2020/ai4i2020.csv`` (AI4I 2020 predictive maintenance).

Loaders only (numpy and the standard library): replay, the demo, training and tests read the data
through them, so the events they publish and the rows the models were trained on are the same.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

#: Folder holding the bundled data, resolved from this file so the CWD does not matter.
DATASETS_DIR: Path = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------
# C-MAPSS (engines)
# --------------------------------------------------------------------------------------------

#: The 26 columns of the C-MAPSS text files, which are also the field names of an engine event.
CMAPSS_COLUMNS: list[str] = ["unit", "cycle", "op_setting_1", "op_setting_2", "op_setting_3"] + [f"s{i}" for i in range(1, 22)]

def load_cmapss(name: str = "train", subset: str = "FD001") -> np.ndarray:
    """Load ``cmapss/{name}_{subset}.txt`` as a float64 array of shape (rows, 26).

    ``name`` is ``"train"`` or ``"test"``. Columns follow :data:`CMAPSS_COLUMNS`; rows keep the file
    order, which is sorted by unit then cycle. Trailing spaces in the file are ignored.
    """
    if name not in ("train", "test"):
        raise ValueError(f"name must be 'train' or 'test', not {name!r}")
    path = DATASETS_DIR / "cmapss" / f"{name}_{subset}.txt"
    # split() with no argument swallows the trailing spaces some rows carry.
    rows = [line.split() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    data = np.asarray(rows, dtype=np.float64)
    if data.shape[1] != len(CMAPSS_COLUMNS):
        raise ValueError(f"{path.name}: expected {len(CMAPSS_COLUMNS)} columns, got {data.shape[1]}")
    return data


def load_rul(subset: str = "FD001") -> np.ndarray:
    """Load ``cmapss/RUL_{subset}.txt``: float64 array (units,), true RUL of test unit ``i + 1``.

    The values are the uncapped ground truth at each test engine's last row.
    """
    path = DATASETS_DIR / "cmapss" / f"RUL_{subset}.txt"
    return np.asarray(path.read_text(encoding="ascii").split(), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# AI4I 2020 (machines)
# --------------------------------------------------------------------------------------------

#: Map from CSV header to the Kafka event field name, for the fields an event carries.
AI4I_EVENT_FIELDS: dict[str, str] = {
    "UDI": "udi",
    "Product ID": "product_id",
    "Type": "type",
    "Air temperature [K]": "air_temperature_k",
    "Process temperature [K]": "process_temperature_k",
    "Rotational speed [rpm]": "rotational_speed_rpm",
    "Torque [Nm]": "torque_nm",
    "Tool wear [min]": "tool_wear_min",
}

#: Map from CSV header to the label keys :func:`load_ai4i` adds (not part of a live event).
AI4I_LABEL_FIELDS: dict[str, str] = {
    "Machine_failure": "machine_failure",
    "TWF": "twf",
    "HDF": "hdf",
    "PWF": "pwf",
    "OSF": "osf",
    "RNF": "rnf",
}

_INT_FIELDS = {"udi", "rotational_speed_rpm", "tool_wear_min"}
_FLOAT_FIELDS = {"air_temperature_k", "process_temperature_k", "torque_nm"}


def load_ai4i() -> list[dict]:
    """Load ``ai4i2020/ai4i2020.csv`` as a list of dicts, one per row in file order.

    Each dict has the event fields ``udi`` (int), ``product_id`` (str), ``type`` ("L"/"M"/"H"),
    ``air_temperature_k``, ``process_temperature_k``, ``torque_nm`` (float),
    ``rotational_speed_rpm``, ``tool_wear_min`` (int), plus the int labels ``machine_failure``,
    ``twf``, ``hdf``, ``pwf``, ``osf``, ``rnf`` (drop those before publishing a live event).
    """
    path = DATASETS_DIR / "ai4i2020" / "ai4i2020.csv"
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            record: dict = {}
            for header, key in AI4I_EVENT_FIELDS.items():
                value = row[header]
                if key in _INT_FIELDS:
                    record[key] = int(value)
                elif key in _FLOAT_FIELDS:
                    record[key] = float(value)
                else:
                    record[key] = value
            for header, key in AI4I_LABEL_FIELDS.items():
                record[key] = int(row[header])
            records.append(record)
    return records
