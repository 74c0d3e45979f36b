"""A config file and its command-line overrides read into one Detectron2 config.

:func:`load_config` is ``get_cfg()`` + the MGD keys (``mgd.config.add_mgd_config``) + the config
file + the ``KEY VALUE`` overrides; every entry point that reads a config goes through it. A
relative ``_BASE_`` that is missing next to the file is looked up in the Detectron2 checkout's
``configs/COCO-Detection/`` (:func:`fallback_config_dir`: this repository's ``configs/*.yaml``
name ``../Base-RetinaNet.yaml``, as if they sat there), so they work where they are. An unknown
key, a bad value or an odd number of override words raises :class:`ConfigError`, the error of
every config check (``mgd_config_checks``, ``mgd_weights_checks``, ``mgd_output_dir``), with a
one-line message (what is wrong, what to do next) that ``train_net.py`` prints as ``error: ...``.
"""
import difflib
import os
import re
from typing import Iterator, List, Tuple

import yaml

import detectron2
from detectron2.config import CfgNode, get_cfg

from mgd.config import add_mgd_config
from mgd.errors import UserError

__all__ = ["ConfigError", "load_config", "fallback_config_dir"]

_DOWNLOADED = ("http://", "https://", "detectron2://", "catalog://")
_NOT_RELATIVE = ("/", "~") + _DOWNLOADED


class ConfigError(UserError, ValueError):
    """A config that cannot run as given; the message is one line (see mgd.errors)."""


def fallback_config_dir() -> str:
    """``configs/COCO-Detection`` of the Detectron2 checkout in use: where this repository's
    configs are meant to sit (their ``_BASE_`` is ``../Base-RetinaNet.yaml``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__))),
                        "configs", "COCO-Detection")


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads a config's structure without constructing Python-tagged values."""


_TagTolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _bases(path: str) -> List[str]:
    with open(path) as f:
        data = yaml.load(f, Loader=_TagTolerantLoader)
    base = data.get("_BASE_") if isinstance(data, dict) else None
    return [] if base is None else list(base) if isinstance(base, (list, tuple)) else [base]


def _base_path(path: str, base: str) -> str:
    """Where fvcore looks for ``base`` named in ``path``."""
    if base.startswith(_NOT_RELATIVE):
        return os.path.expanduser(base)
    return os.path.join(os.path.dirname(path), base)


def _resolves(path: str) -> bool:
    """Whether every ``_BASE_`` of ``path``, recursively, exists where fvcore looks for it."""
    return all(base.startswith(_DOWNLOADED)
               or (os.path.isfile(_base_path(path, base)) and _resolves(_base_path(path, base)))
               for base in _bases(path))


def _merge_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file(path)``, with missing relative ``_BASE_`` files taken from
    :func:`fallback_config_dir` (at any depth of the chain)."""
    if _resolves(path):
        cfg.merge_from_file(path)  # Detectron2's own loading (version upgrades included)
        return
    for base in _bases(path):
        resolved = _base_path(path, base)
        if not os.path.isfile(resolved) and not base.startswith(_NOT_RELATIVE):
            resolved = os.path.normpath(os.path.join(fallback_config_dir(), base))
            if not os.path.isfile(resolved):
                raise ConfigError(f"{path}: _BASE_ {base!r} not found next to it nor in {fallback_config_dir()}")
        _merge_file(cfg, resolved)
    with open(path) as f:
        data = yaml.unsafe_load(f)  # as Detectron2 reads configs (they may hold !!python tags)
    data.pop("_BASE_")
    cfg.merge_from_other_cfg(type(cfg)(data))


def _unknown_key_message(error: KeyError, cfg: CfgNode, where: str) -> str:
    text = str(error.args[0]) if error.args else str(error)
    key = text.split(":", 1)[1].strip() if ":" in text else text
    known = [k for k, _ in _flat_items(cfg)]
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown config key {key} {where}" + (f" (did you mean {close[0]}?)" if close else "")


def _flat_items(node: CfgNode, prefix: str = "") -> Iterator[Tuple[str, object]]:
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load_config(config_file: str, opts: List[str]) -> CfgNode:
    """The full config (Detectron2 defaults, MGD keys, ``config_file``, then ``opts``)."""
    if not config_file:
        raise ConfigError("no config file given; pass --config-file FILE "
                          "(e.g. configs/mgd_retinanet_R50_R18_FPN_1x.yaml)")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file} not found")
    cfg = add_mgd_config(get_cfg())
    try:
        _merge_file(cfg, config_file)
    except KeyError as error:
        raise ConfigError(_unknown_key_message(error, cfg, f"in {config_file}")) from None
    except (ValueError, AssertionError, yaml.YAMLError, OSError) as error:
        raise ConfigError(f"cannot load {config_file}: {' '.join(str(error).split())}") from None
    if len(opts) % 2:
        raise ConfigError(f"the KEY VALUE overrides must come in pairs; got {len(opts)} words: {' '.join(opts)}")
    try:
        cfg.merge_from_list(_whole_numbers_as_floats(cfg, list(opts)))
    except KeyError as error:
        raise ConfigError(_unknown_key_message(error, cfg, "on the command line")) from None
    except AssertionError as error:
        if str(error).startswith("Non-existent key"):  # fvcore's message for a key path not in cfg
            raise ConfigError(_unknown_key_message(KeyError(str(error)), cfg, "on the command line")) from None
        raise ConfigError(f"bad override on the command line: {' '.join(str(error).split())}") from None
    except ValueError as error:
        raise ConfigError(f"bad override on the command line: {' '.join(str(error).split())}") from None
    return cfg


def _whole_numbers_as_floats(cfg: CfgNode, opts: List[str]) -> List[str]:
    """The overrides with a whole number given for a float key written as a float
    (``MGD.LOSS_WEIGHT 0`` -> ``0.0``), which yacs would refuse as a type mismatch."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node, *path = str(out[i]).split(".")
        default = cfg.get(node)
        for part in path:
            default = default.get(part) if isinstance(default, CfgNode) else None
        if isinstance(default, float) and re.fullmatch(r"[+-]?\d+", str(out[i + 1]).strip()):
            out[i + 1] = f"{int(out[i + 1])}.0"
    return out
