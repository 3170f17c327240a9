"""The learned policy at run time: an MLP exported as plain arrays, evaluated with numpy.

A policy file is two files side by side:

``NAME.npz``
    the weights, ``W0, b0, W1, b1, ...``; ``Wi`` has shape (inputs, outputs) and a layer is
    ``y = act(x @ Wi + bi)`` (no activation after the last layer, whose outputs are the logits
    of the :data:`~edgesched.observation.N_ACTIONS` actions). Optional ``obs_mean`` and
    ``obs_std`` normalise the observation first (``(obs - mean) / std``, clipped to
    ``+-obs_clip``). A torch ``nn.Linear`` weight is (outputs, inputs): export its transpose.
``NAME.json``
    the manifest: ``format`` ("edgesched-policy/1"), ``obs_version``, ``obs_dim``, ``n_actions``,
    ``action_map`` (:func:`~edgesched.observation.action_map_id`), ``activation`` ("tanh" or
    "relu"), ``devices`` trained on, ``algo``, ``seed``, ``sha256`` of the npz, and anything the
    trainer adds (its config, evaluation figures).

:func:`load_learned` checks the hash and the contract and never unpickles. The daemon never
imports torch: this module needs numpy only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.errors import PolicyError, PolicyMismatchError
from edgesched.observation import BLOCKING_SHARE as BLOCKING_SHARE  # re-exported, as before
from edgesched.observation import (
    MAX_CLUSTERS,
    N_ACTIONS,
    OBS_DIM,
    OBS_VERSION,
    BoardView,
    Decision,
    DecisionContext,
    action_map_id,
    build_observation,
    check_policy_board,
)
from edgesched.policy.base import StaticPolicy
from edgesched.policy.safe import SafeSet

POLICY_FORMAT = "edgesched-policy/1"
ACTIVATIONS = ("tanh", "relu")
RESERVED_KEYS = ("format", "obs_version", "obs_dim", "n_actions", "action_map", "sha256", "layers",
                 "weights")
_ZERO = np.float32(0.0)
_MASKED = np.float32(-1e30)
"""Logit bias of a masked action: finite (no inf * 0 in the matrix product), never chosen."""
_FALLBACK = ("the daemon does not start with it unless policy.fallback is set, and then falls back "
             "to the configured baseline policy")


def policy_paths(path: str | Path) -> tuple[Path, Path]:
    """(npz, manifest) for ``NAME``, ``NAME.npz`` or ``NAME.json``."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a policy file is readable by the service
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LearnedPolicy(StaticPolicy):
    """An exported MLP behind the :class:`~edgesched.policy.base.Policy` protocol.

    ``decide`` computes the decision's safe set (:mod:`edgesched.policy.safe`: the actions that
    keep the deadline, queue, blocking and load bounds of ``slack``), builds the shared
    observation with it, runs the forward pass in preallocated buffers, and takes the argmax of
    the logits over the safe actions, as the training environment's action mask does.
    """

    qos_guardable = True
    """The miss-budget guard (:mod:`edgesched.qos`) may raise its decisions."""
    observation_clusters = MAX_CLUSTERS
    """Clusters the observation shows: ``reset`` refuses a board with more
    (:func:`~edgesched.observation.check_policy_board`)."""

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], *, activation: str,
                 name: str = "learned", manifest: Mapping[str, Any] | None = None,
                 obs_mean: np.ndarray | None = None, obs_std: np.ndarray | None = None,
                 obs_clip: float = 10.0) -> None:
        if activation not in ACTIVATIONS:
            raise PolicyError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if not layers:
            raise PolicyError("a policy needs at least one layer")
        self.name = name
        self.activation = activation
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.trained_on: tuple[str, ...] = tuple(self.manifest.get("devices", ()))
        self.weights = [np.ascontiguousarray(w, dtype=np.float32) for w, _ in layers]
        self.biases = [np.ascontiguousarray(b, dtype=np.float32).reshape(-1) for _, b in layers]
        self._check_shapes()
        self.obs_mean = None if obs_mean is None else np.asarray(obs_mean, np.float32)
        self.obs_inv_std = None if obs_std is None else (
            1.0 / np.maximum(np.asarray(obs_std, np.float32), np.float32(1e-8))).astype(np.float32)
        self.obs_clip = float(obs_clip)
        self._relu = activation == "relu"
        # Speed: the bias is folded into the weights as an extra input row (each input buffer
        # ends with a constant 1.0), so a layer is one np.dot plus the activation, in place.
        # The action mask is folded into the last layer's bias row the same way (per board).
        self._aug = [np.vstack([w, b[None, :]]).astype(np.float32) for w, b in
                     zip(self.weights, self.biases, strict=True)]
        self._ins = [np.ones(w.shape[0] + 1, dtype=np.float32) for w in self.weights]
        self._heads = [buf[:-1] for buf in self._ins]
        self._out = np.empty(N_ACTIONS, dtype=np.float32)
        self._outs = [*self._heads[1:], self._out]
        self._view: BoardView | None = None
        self._last_masked = self._aug[-1]
        self._safe_set = SafeSet()
        self._biases: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        """The logit bias of each shared safe mask (:meth:`_safe_bias`), keyed by its id."""
        self.safe_only = True
        """Choose among the decision's safe actions only (:mod:`edgesched.policy.safe`), as in
        training; off: among every action of the board (for tests of the network alone)."""

    def _check_shapes(self) -> None:
        width = OBS_DIM
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or w.shape[0] != width:
                raise PolicyError(f"layer {i}: W{i} has shape {w.shape}, expected ({width}, n) "
                                  "(weights are (inputs, outputs); transpose torch weights)")
            if b.shape != (w.shape[1],):
                raise PolicyError(f"layer {i}: b{i} has shape {b.shape}, expected ({w.shape[1]},)")
            width = w.shape[1]
        if width != N_ACTIONS:
            raise PolicyMismatchError(f"the last layer has {width} outputs but the daemon has "
                                      f"{N_ACTIONS} actions; {_FALLBACK}")

    def _run(self, obs: np.ndarray, last: np.ndarray) -> np.ndarray:
        x = self._heads[0]
        np.copyto(x, obs, casting="same_kind")
        if self.obs_mean is not None and self.obs_inv_std is not None:
            np.subtract(x, self.obs_mean, out=x)
            np.multiply(x, self.obs_inv_std, out=x)
            np.clip(x, -self.obs_clip, self.obs_clip, out=x)
        n = len(self._aug) - 1
        ins, aug, outs = self._ins, self._aug, self._outs
        act = np.maximum if self._relu else None
        for i in range(n):
            h = outs[i]
            np.dot(ins[i], aug[i], out=h)
            if act is None:
                np.tanh(h, out=h)
            else:
                act(h, _ZERO, out=h)
        np.dot(ins[n], last, out=self._out)
        return self._out

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """Logits for one observation. The returned array is an internal buffer, overwritten by
        the next call: copy it to keep it."""
        return self._run(obs, self._aug[-1])

    def _mask_for(self, view: BoardView) -> np.ndarray:
        if view is not self._view:
            last = self._aug[-1].copy()
            last[-1, np.asarray(view.mask) == 0] = _MASKED
            self._last_masked = last
            self._view = view
        return self._last_masked

    def reset(self, view: BoardView, seed: int | None = None) -> None:
        del seed
        check_policy_board(self, view.profile)
        self._mask_for(view)
        self._safe_set.reset(view)

    def action(self, view: BoardView, obs: np.ndarray) -> int:
        """The best unmasked action for ``obs`` on ``view``'s board."""
        return int(self._run(obs, self._mask_for(view)).argmax())

    def decide(self, view: BoardView, ctx: DecisionContext) -> Decision:
        safe = self._safe_set.compute(view, ctx)
        logits = self._run(build_observation(view, ctx, safe), self._mask_for(view))
        if self.safe_only:
            np.add(logits, self._safe_bias(safe.mask), out=logits)
        return view.decode(int(logits.argmax()))

    def _safe_bias(self, mask: np.ndarray) -> np.ndarray:
        """0 for the actions of ``mask``, ``_MASKED`` for the rest; cached by the mask's
        identity when it is read-only (the safe set shares those between decisions)."""
        if mask.flags.writeable:
            return np.where(mask != 0, _ZERO, _MASKED)
        hit = self._biases.get(id(mask))
        if hit is not None and hit[0] is mask:
            return hit[1]
        bias = np.where(mask != 0, _ZERO, _MASKED)
        if len(self._biases) >= 4096:
            self._biases.clear()
        self._biases[id(mask)] = (mask, bias)
        return bias


def _mismatches(m: Mapping[str, Any]) -> list[str]:
    expected = {"obs_version": OBS_VERSION, "obs_dim": OBS_DIM, "n_actions": N_ACTIONS,
                "action_map": action_map_id()}
    return [f"{k} is {m.get(k)!r} in the file but {v!r} in this edgesched"
            for k, v in expected.items() if m.get(k) != v]


def load_learned(path: str | Path, *, device_name: str | None = None,
                 log: logging.Logger | None = None) -> LearnedPolicy:
    """Load and check ``NAME.npz`` + ``NAME.json``.

    Raises :class:`PolicyError` (unreadable, hash mismatch, malformed) or
    :class:`PolicyMismatchError` (observation version, dimension, action count or action map
    differ). A ``device_name`` the policy was not trained on is only logged: observations are
    normalised so policies transfer between boards.
    """
    log = log or logging.getLogger("edgesched.policy")
    npz_path, man_path = policy_paths(path)
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy manifest {man_path} not found (a policy is NAME.npz plus "
                          f"NAME.json); {_FALLBACK}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy manifest {man_path}: {exc}; {_FALLBACK}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"policy manifest {man_path} is not valid JSON (line {exc.lineno}: "
                          f"{exc.msg}); {_FALLBACK}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != POLICY_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PolicyError(f"{man_path}: format is {got!r}, expected {POLICY_FORMAT!r}; "
                          f"{_FALLBACK}")
    diffs = _mismatches(manifest)
    if diffs:
        raise PolicyMismatchError(f"policy {man_path} does not fit this daemon: "
                                  f"{'; '.join(diffs)}. Retrain or re-export it with this "
                                  f"edgesched version; {_FALLBACK}")
    activation = manifest.get("activation")
    if activation not in ACTIVATIONS:
        raise PolicyError(f"{man_path}: activation {activation!r} is not one of "
                          f"{', '.join(ACTIVATIONS)}; {_FALLBACK}")
    try:
        digest = _sha256(npz_path)
    except OSError as exc:
        raise PolicyError(f"cannot read policy weights {npz_path}: {exc.strerror or exc}; "
                          f"{_FALLBACK}") from None
    if digest != manifest.get("sha256"):
        raise PolicyError(f"policy weights {npz_path} do not match the sha256 in {man_path} "
                          f"(file {digest[:12]}..., manifest {str(manifest.get('sha256'))[:12]}"
                          f"...); the file was changed or truncated — re-export it; {_FALLBACK}")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise PolicyError(f"cannot load policy weights {npz_path} ({exc}); {_FALLBACK}") from None
    n = sum(1 for k in arrays if k.startswith("W") and k[1:].isdigit())
    if n == 0:
        raise PolicyError(f"{npz_path} holds no layers W0, b0, ...; {_FALLBACK}")
    try:
        layers = [(arrays[f"W{i}"], arrays[f"b{i}"]) for i in range(n)]
    except KeyError as exc:
        raise PolicyError(f"{npz_path} lacks array {exc.args[0]}; layers must be W0, b0, W1, "
                          f"b1, ... without gaps; {_FALLBACK}") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "fiu":
            raise PolicyError(f"{npz_path}: array {k} has dtype {a.dtype}, expected floats")
    devices = tuple(str(d) for d in manifest.get("devices", ()))
    if device_name is not None and devices and device_name not in devices:
        log.info("policy %s was trained on %s, running it on %s", npz_path.stem,
                 ", ".join(devices), device_name)
    mean, std = arrays.get("obs_mean"), arrays.get("obs_std")
    if (mean is None) != (std is None):
        raise PolicyError(f"{npz_path}: obs_mean and obs_std come together; {_FALLBACK}")
    try:
        return LearnedPolicy(layers, activation=activation, name=f"learned:{npz_path.stem}",
                             manifest=manifest, obs_mean=mean, obs_std=std,
                             obs_clip=float(manifest.get("obs_clip", 10.0)))
    except PolicyMismatchError:
        raise
    except PolicyError as exc:
        raise PolicyError(f"{npz_path}: {exc}; {_FALLBACK}") from None


def save_learned(path: str | Path, layers: Sequence[tuple[np.ndarray, np.ndarray]],
                 manifest_extra: Mapping[str, Any], *,
                 obs_norm: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write ``NAME.npz`` and ``NAME.json`` (with the npz's sha256); returns the manifest path.

    ``layers`` are (W, b) with W of shape (inputs, outputs). ``manifest_extra`` gives at least
    ``activation`` (default "tanh"), ``devices``, ``algo`` and ``seed``; the contract keys
    (:data:`RESERVED_KEYS`) are written from this edgesched and cannot be overridden.
    """
    clash = sorted(set(manifest_extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"manifest_extra may not set {', '.join(clash)}")
    extra = dict(manifest_extra)
    extra.setdefault("activation", "tanh")
    for key in ("devices", "algo", "seed"):
        if key not in extra:
            raise ValueError(f"manifest_extra must give {key!r}")
    # validates shapes and activation before anything is written
    LearnedPolicy(layers, activation=str(extra["activation"]),
                  obs_mean=None if obs_norm is None else obs_norm[0],
                  obs_std=None if obs_norm is None else obs_norm[1])
    npz_path, man_path = policy_paths(path)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(layers):
        arrays[f"W{i}"] = np.ascontiguousarray(w, dtype=np.float32)
        arrays[f"b{i}"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    if obs_norm is not None:
        arrays["obs_mean"] = np.asarray(obs_norm[0], dtype=np.float32)
        arrays["obs_std"] = np.asarray(obs_norm[1], dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    _atomic_write(npz_path, data)
    manifest = {
        "format": POLICY_FORMAT, "obs_version": OBS_VERSION, "obs_dim": OBS_DIM,
        "n_actions": N_ACTIONS, "action_map": action_map_id(),
        "layers": [[int(w.shape[0]), int(w.shape[1])] for w, _ in layers],
        "sha256": hashlib.sha256(data).hexdigest(), **extra,
    }
    _atomic_write(man_path, (json.dumps(manifest, indent=1, default=str) + "\n").encode())
    return man_path


def make_random_policy(path: str | Path, *, hidden: Sequence[int] = (64, 64),
                       activation: str = "tanh", seed: int = 0,
                       devices: Sequence[str] = ("rk3399",)) -> Path:
    """A policy file with random weights (for tests and benchmarks); returns the manifest path."""
    rng = np.random.default_rng(seed)
    sizes = [OBS_DIM, *hidden, N_ACTIONS]
    layers = [(rng.normal(0.0, 1.0 / np.sqrt(a), (a, b)).astype(np.float32),
               rng.normal(0.0, 0.1, b).astype(np.float32)) for a, b in itertools.pairwise(sizes)]
    return save_learned(path, layers, {"activation": activation, "devices": list(devices),
                                       "algo": "random", "seed": seed})
