"""The shipped configs (package data), and the demo config in a form that loads from anywhere."""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().with_name("demo.toml")
# The demo config's relative paths, resolved against its folder (see load_config).
_RELATIVE_DIRS = ('"../schemas/', '"../models/')


def demo_config_text() -> str:
    """demo.toml with its relative model and schema paths made absolute, so that a copy written
    anywhere (a test's or a tool's work folder) loads the packaged files."""
    text = DEMO_CONFIG.read_text()
    for relative in _RELATIVE_DIRS:
        if relative not in text:
            raise ValueError(f"{DEMO_CONFIG} no longer names {relative[1:]}: update demo_config_text")
        text = text.replace(relative, f'"{(DEMO_CONFIG.parent / relative[1:]).resolve()}/')
    return text
