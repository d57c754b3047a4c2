"""The methods the training loop composes, one module each: `method=<name>` picks one."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scn.errors import UserError
from scn.methods.base import Method
from scn.methods.eac import EAC
from scn.methods.ran import RAN, SCNRAN
from scn.methods.rul import RUL
from scn.methods.scn import SCN, Baseline

METHODS: dict[str, type[Method]] = {m.name: m for m in (SCN, Baseline, RAN, SCNRAN, EAC, RUL)}

# before the `method` group, two switches chose the method: (scn.enabled, ran.enabled) -> method
LEGACY = {(True, False): "scn", (False, False): "baseline", (False, True): "ran",
          (True, True): "scn_ran"}  # fmt: skip


def _get(config: Any, path: str, default: Any = None) -> Any:
    node = config
    for key in path.split("."):
        if node is None or key not in node:
            return default
        node = node[key]
    return node


def method_name(config: Any) -> str:
    """The method of a run's config (a DictConfig or the plain dict a checkpoint or run directory
    stores), configs from before the `method` group included."""
    name = _get(config, "method.name")
    if name is not None:
        return str(name)
    scn = _get(config, "scn.enabled")
    ran = _get(config, "ran.enabled")
    return LEGACY[(True if scn is None else bool(scn), bool(ran))]


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config from before the `method` group, in today's terms: `method.name` from the
    two switches (which are dropped), and RAN's whole face at the crops' size as it was then."""
    if "method" in config or "scn" not in config:
        return config
    config = copy.deepcopy(config)
    name = method_name(config)
    config["method"] = {"name": name}
    config["scn"].pop("enabled", None)
    ran = config.get("ran")
    if ran is not None:
        ran.pop("enabled", None)
        ran.setdefault("face_size", ran.get("region_size"))
    return config


def check_legacy_switches(cfg: DictConfig) -> None:
    """`scn.enabled` / `ran.enabled` on the command line: stop, naming the option that replaced them."""
    for key in ("scn.enabled", "ran.enabled"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            raise UserError(
                f"{key}={value}: the method is chosen with method= now: method=baseline (was "
                "scn.enabled=false), method=ran (ran.enabled=true scn.enabled=false), "
                "method=scn_ran (ran.enabled=true); the options are "
                f"{', '.join(METHODS)}"
            )


def build_method(cfg: DictConfig) -> Method:
    """The run's method, from `method.name`."""
    check_legacy_switches(cfg)
    name = method_name(cfg)
    if name not in METHODS:
        raise UserError(f"method.name={name!r}; available: {', '.join(METHODS)}")
    return METHODS[name](cfg)
