"""What produced a result: the resolved config (as a hash), the input file and the tlsquant version.

Every summary.json carries a ``provenance`` record; a rerun counts a slide's outputs as
complete only when the record matches what it would produce now (:func:`completion`),
so changing a setting, replacing a slide file or upgrading tlsquant never reuses stale
results silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import Config

# settings that change how fast, not what: results are identical for any of their values
NEUTRAL_SECTIONS = ("compute", "cluster")


def config_hash(config: Config) -> str:
    """Short SHA-256 of the resolved config, without the sections that cannot change results."""
    values = {k: v for k, v in config.to_dict().items() if k not in NEUTRAL_SECTIONS}
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def input_signature(path: str | Path) -> dict[str, Any]:
    """Size and modification time of a slide file (a folder: of every file in it)."""
    path = Path(path)
    if path.is_dir():
        size, mtime = 0, 0
        for root, _, files in os.walk(path):
            for name in files:
                stat = os.stat(os.path.join(root, name))
                size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
        return {"bytes": size, "mtime_ns": mtime}
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def provenance(config: Config, path: str | Path | None, *, annotations: str | Path | None = None) -> dict[str, Any]:
    """The record written into summary.json (``annotations``: the QuPath regions file used, if any)."""
    record: dict[str, Any] = {"tlsquant_version": __version__, "config_hash": config_hash(config)}
    if path is not None and Path(path).exists():
        record["input"] = {"path": str(Path(path).resolve()), **input_signature(path)}
    record["annotations"] = ({"path": str(Path(annotations).resolve()), **input_signature(annotations)}
                             if isinstance(annotations, (str, Path)) and Path(annotations).is_file() else None)
    return record


def compatible_versions(a: str, b: str) -> bool:
    """Same major and minor version (patch releases do not change results)."""
    return a.split(".")[:2] == b.split(".")[:2]


@dataclass(frozen=True)
class Completion:
    complete: bool
    reason: str  # why not (empty when complete); "missing" when there is nothing at all
    whole: bool = False  # every output is there (complete, or made another way)

    @property
    def stale(self) -> bool:
        return not self.complete and self.reason != "missing"


def completion(folder: str | Path, slide_id: str, expected: dict[str, Any]) -> Completion:
    """Whether ``folder`` holds this slide's whole outputs, made as ``expected`` (a :func:`provenance`) would.

    Whole: summary.json (written last) names the slide and every output it lists exists.
    Made the same way: same config hash, same input size and modification time, and a
    compatible tlsquant version.
    """
    summary_path = Path(folder) / "summary.json"
    if not summary_path.is_file():
        return Completion(False, "missing")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Completion(False, "summary.json is unreadable")
    if not isinstance(summary, dict) or summary.get("slide_id") != slide_id:
        return Completion(False, f"summary.json belongs to {summary.get('slide_id')!r}" if isinstance(summary, dict)
                          else "summary.json is not an object")
    absent = [name for name in summary.get("outputs", []) if not (Path(folder) / name).exists()]
    if absent:
        return Completion(False, f"outputs missing: {', '.join(absent)}")
    made = summary.get("provenance") or {}
    if made.get("config_hash") != expected.get("config_hash"):
        return Completion(False, f"made with another config (hash {made.get('config_hash')}, now "
                                 f"{expected.get('config_hash')})", whole=True)
    if not compatible_versions(str(made.get("tlsquant_version", "")), str(expected.get("tlsquant_version", ""))):
        return Completion(False, f"made by tlsquant {made.get('tlsquant_version')}, now "
                                 f"{expected.get('tlsquant_version')}", whole=True)
    was, now = made.get("input"), expected.get("input")
    if now is not None and was is not None and (was.get("bytes"), was.get("mtime_ns")) != (now["bytes"], now["mtime_ns"]):
        return Completion(False, "the slide file changed since (size or modification time)", whole=True)
    if "channels" in expected and (summary.get("source") or {}).get("channels") != expected["channels"]:
        return Completion(False, "made with other channel names", whole=True)
    if "annotations" in expected:
        was, now = made.get("annotations"), expected["annotations"]
        if (was is None) != (now is None) or (now is not None and (was.get("bytes"), was.get("mtime_ns")) !=
                                              (now["bytes"], now["mtime_ns"])):
            return Completion(False, "the annotations file changed since (added, removed or edited)", whole=True)
    return Completion(True, "", whole=True)
