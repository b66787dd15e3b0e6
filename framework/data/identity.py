"""What a run's data was, in named parts small enough to keep in every checkpoint: the
artifact's fingerprint (cache.artifact_identity's digest), each source's and reference
file's identity (path, bytes, files, a digest of their sizes and modification times),
digests of the tokenizer and of the chat template, and the settings that shape the
artifact under their config keys. Written beside the artifact (identity.json) on the
driver; checkpoints copy it into progress.json; `changes` names what differs between
two of them in one line (train/checkpoint.py's check_resume: a resume on other data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from framework.config.schema import DataConfig
from framework.run.files import write_json

IDENTITY_FILE = "identity.json"
# Values whose JSON is longer than this are kept as a digest.
_SHORT = 80
# At most this many changes are named; the rest are counted.
_NAMED = 3


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_part(path: str, files: list) -> dict:
    """`files`: cache._source_identity(path), [(file, size, mtime_ns), ...] (or [name] for
    a hub data set)."""
    sizes = [f[1] for f in files if not isinstance(f, str)]
    return {"path": path, "bytes": sum(sizes), "files": len(sizes), "digest": _digest(files)}


def _flatten(value, key: str, out: dict) -> None:
    """Settings under their config keys; lists of sections by index (data.sources[0].weight)."""
    if isinstance(value, dict):
        for name, inner in value.items():
            _flatten(inner, f"{key}.{name}", out)
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        out[key] = f"{len(value)} entries"
        for index, inner in enumerate(value):
            _flatten(inner, f"{key}[{index}]", out)
    else:
        short = len(json.dumps(value, default=str)) <= _SHORT
        out[key] = value if short else f"sha256:{_digest(value)}"


def summarize(
    identity: dict, cfg: DataConfig, fingerprint: str, reference_files: tuple[str, ...] = ()
) -> dict:
    """The named parts of cache.artifact_identity(cfg, ..., reference_files), whose digest
    is `fingerprint`."""
    named_paths = [(f"data.sources[{i}]", s.path) for i, s in enumerate(cfg.sources)]
    named_paths += [(f"data.eval_sources[{i}]", s.path) for i, s in enumerate(cfg.eval_sources)]
    named_paths += [
        (f"data.curate.decontaminate_files[{i}]", path)
        for i, path in enumerate(cfg.curate.decontaminate_files)
    ]
    named_paths += [("eval.ifeval_path", path) for path in reference_files]
    found = identity["files"] + identity["reference_files"]
    files = {name: _file_part(path, f) for (name, path), f in zip(named_paths, found, strict=True)}
    settings: dict = {}
    _flatten(identity["settings"], "data", settings)
    settings["trainer.seed"] = identity["seed"]
    settings["objective.pairs"] = identity["pairs"]
    return {
        "fingerprint": fingerprint,
        "version": identity["version"],
        "files": files,
        "tokenizer": _digest([identity["tokenizer"], identity["specials"]]),
        "template": _digest(identity["template"]),
        "suite_code": _digest(identity["suite_code"]),
        "settings": settings,
    }


def write(artifact: Path, summary: dict) -> None:
    """Beside the artifact, once (older artifacts get it from the driver that uses them)."""
    if not (artifact / IDENTITY_FILE).exists():
        write_json(artifact / IDENTITY_FILE, summary)


def _shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _file_change(name: str, was: dict, now: dict) -> str:
    if was["files"] != now["files"] and max(was["files"], now["files"]) > 1:
        how = f"{was['files']} -> {now['files']} files"
    elif was["bytes"] != now["bytes"]:
        how = f"size {was['bytes']} -> {now['bytes']} bytes"
    else:
        how = "same size, modified since"
    return f"{name} {now['path']} changed ({how})"


def _setting_change(key: str, was: dict, now: dict) -> str:
    if key not in was:
        return f"{key} added ({_shown(now[key])})"
    if key not in now:
        return f"{key} removed (was {_shown(was[key])})"
    return f"{key} changed ({_shown(was[key])} -> {_shown(now[key])})"


def changes(recorded: dict | None, current: dict | None) -> str | None:
    """What differs between a checkpoint's recorded identity and the run's current one, in
    one line, or None: the same artifact, or an identity missing on either side (a
    checkpoint or an artifact older than these records)."""
    if not recorded or not current or recorded["fingerprint"] == current["fingerprint"]:
        return None
    named = []
    was_files, now_files = recorded["files"], current["files"]
    for name, was in was_files.items():
        now = now_files.get(name)
        if now and was["path"] == now["path"] and was["digest"] != now["digest"]:
            named.append(_file_change(name, was, now))
    was_set, now_set = recorded["settings"], current["settings"]
    for key in sorted(was_set.keys() | now_set.keys()):
        if was_set.get(key, ...) != now_set.get(key, ...):
            named.append(_setting_change(key, was_set, now_set))
    for part, words in (
        ("tokenizer", "the tokenizer changed"),
        ("template", "the chat template changed"),
        ("suite_code", "the built-in suite's code changed"),
        ("version", f"the artifact format changed (version {recorded['version']} -> "
                    f"{current['version']})"),
    ):  # fmt: skip
        if recorded[part] != current[part]:
            named.append(words)
    if not named:
        return f"the data artifact changed ({recorded['fingerprint'][:12]} -> " + (
            f"{current['fingerprint'][:12]})"
        )
    more = f" and {len(named) - _NAMED} more" if len(named) > _NAMED else ""
    return "; ".join(named[:_NAMED]) + more
