"""Policy specs to policy objects: ``make_policy("schedutil")`` and friends.

A spec is ``PREFIX`` or ``PREFIX:ARGUMENT``; the prefix (everything before the first ``:``)
selects a factory in :data:`FACTORIES`, which receives the whole spec.  The kernel-governor
baselines are built in.  The daemon imports this module, so it must stay light: no torch, no
gymnasium, no I/O at import time.

Extension point
---------------
Modules with heavier policies register themselves, e.g.::

    from edgesched.policy import registry
    registry.register("qlearn", make_qlearn, usage="qlearn")
    registry.register("learned", load_learned, usage="learned:PATH")

A factory takes the full spec string and returns a :class:`~edgesched.policy.base.Policy`, raising
:class:`~edgesched.errors.PolicyError` for an argument it cannot use.

Shipped policies
----------------
The trained policies of the top-level ``policies/`` folder are installed with the package (as
``edgesched/data/policies``, see ``pyproject.toml``) and are named by their file name:
``learned:rk3399``, ``learned:generic``. A bare name (no ``/``, no ``.npz``/``.json``) that is a
shipped policy means that file, from any working directory and in a non-editable install; any
other ``learned:PATH`` is a path, relative to the working directory, and one that does not exist
is an error naming that folder and the shipped names.

An unusable policy is an error
------------------------------
:func:`open_policy` (the daemon's start) raises :class:`PolicyError` for a spec that cannot be
used, with the valid specs in the message, unless a fallback baseline is given
(``policy.fallback`` in the config): then the reason is logged and the fallback runs.
:func:`check_specs` checks a list of specs up front (``edgesched demo`` and ``eval``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from edgesched.errors import PolicyError
from edgesched.policy.base import Performance, PerformanceBig, Policy, Powersave, PowersaveBig
from edgesched.policy.governors import (
    Conservative,
    ConservativeBig,
    Ondemand,
    OndemandBig,
    Schedutil,
    SchedutilBig,
)
from edgesched.policy.slack import GuardedSlack, SlackPolicy

__all__ = ["FACTORIES", "PolicyFactory", "check_fallback", "check_specs", "make_policy",
           "open_policy", "register", "resolve_learned_path", "shipped_policies",
           "shipped_policy_dirs", "specs_help", "valid_specs"]

PolicyFactory = Callable[[str], Policy]

FACTORIES: dict[str, PolicyFactory] = {}
"""Policy factories keyed by spec prefix (the part before the first ``:``)."""

_USAGE: dict[str, str] = {}


def _plain(prefix: str, cls: Callable[[], Policy]) -> PolicyFactory:
    """A factory for a built-in policy that takes no argument."""

    def factory(spec: str) -> Policy:
        if spec != prefix:
            raise PolicyError(f"policy {prefix!r} takes no argument, got {spec!r}; "
                              f"use {prefix!r}")
        return cls()

    factory.__name__ = f"make_{prefix}"
    return factory


def register(prefix: str, factory: PolicyFactory, *, usage: str | None = None,
             replace: bool = False) -> None:
    """Make ``make_policy`` hand specs starting with ``prefix`` to ``factory``.

    ``usage`` is how the spec is written in error messages (``"learned:PATH"``); it defaults to
    the prefix.  Registering a prefix twice is an error unless ``replace`` is true.
    """
    if not prefix or ":" in prefix or prefix != prefix.strip():
        raise ValueError(f"a policy prefix is a non-empty word without ':', got {prefix!r}")
    if prefix in FACTORIES and not replace:
        raise ValueError(f"policy prefix {prefix!r} is already registered")
    FACTORIES[prefix] = factory
    _USAGE[prefix] = usage or prefix


def valid_specs() -> list[str]:
    """How each registered spec is written, in registration order."""
    return [_USAGE.get(p, p) for p in FACTORIES]


def shipped_policy_dirs() -> list[Path]:
    """Where shipped policy files are looked for: the installed package data
    (``edgesched/data/policies``), then the source tree's ``policies/`` (an editable install or a
    checkout, where the package data is not copied)."""
    pkg = Path(__file__).resolve().parent.parent
    return [pkg / "data" / "policies", pkg.parent / "policies"]


def shipped_policies() -> dict[str, Path]:
    """Shipped policy name -> its ``NAME.npz`` (a policy is ``NAME.npz`` with ``NAME.json``)."""
    found: dict[str, Path] = {}
    for folder in shipped_policy_dirs():
        if not folder.is_dir():
            continue
        for npz in sorted(folder.glob("*.npz")):
            if npz.with_suffix(".json").is_file():
                found.setdefault(npz.stem, npz)
    return found


def _shipped_note() -> str:
    names = sorted(shipped_policies())
    if not names:
        return "no shipped policies are installed"
    return "shipped: " + ", ".join(f"learned:{n}" for n in names)


def specs_help(extra: Iterable[str] = (), shipped: bool = True) -> str:
    """The valid specs for error messages: every registered form, ``extra`` ones (``oracle``
    in ``eval``), and (with ``shipped``) the shipped learned policies by name."""
    specs = ", ".join([*valid_specs(), *extra])
    return f"{specs} ({_shipped_note()})" if shipped else specs


def resolve_learned_path(arg: str, cwd: Path | None = None) -> Path:
    """The ``NAME.npz`` that ``learned:ARG`` means: a shipped policy for a bare shipped name,
    else ``ARG`` as a path (relative to ``cwd``, default the working directory).

    Raises :class:`PolicyError` when neither exists, naming the folder a relative path was
    resolved against and the shipped names.
    """
    shipped = shipped_policies()
    bare = "/" not in arg and not arg.endswith((".npz", ".json"))
    if bare and arg in shipped:
        return shipped[arg]
    path = Path(arg).expanduser()
    npz = (path.with_suffix(".npz") if path.suffix in (".npz", ".json")
           else path.with_name(path.name + ".npz"))
    base = cwd if cwd is not None else Path.cwd()
    full = npz if npz.is_absolute() else base / npz
    if not full.is_file():
        where = "" if npz.is_absolute() else f" (resolved against {base})"
        raise PolicyError(f"policy file {full} not found{where}; use a shipped policy by name "
                          f"or an existing NAME.npz with NAME.json beside it; {_shipped_note()}")
    return full


def make_policy(spec: str, extra: Iterable[str] = ()) -> Policy:
    """A fresh policy for ``spec`` (``"performance"``, ``"schedutil"``, ``"learned:rk3399"``,
    ``"learned:PATH"`` ...).

    Raises :class:`PolicyError` naming the valid specs when the prefix is unknown.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"empty policy spec; valid specs: {specs_help(extra)}")
    prefix = spec.split(":", 1)[0]
    factory = FACTORIES.get(prefix)
    if factory is None:
        raise PolicyError(f"unknown policy {spec!r}; valid specs: {specs_help(extra)}")
    return factory(spec)


def check_specs(specs: Iterable[str], builtin: Iterable[str] = ()) -> None:
    """Check every spec up front (each one is built once and dropped); raises the first
    :class:`PolicyError`. ``builtin``: names the caller handles itself (``oracle`` in
    ``eval``), accepted as they are and listed among the valid specs."""
    extra = tuple(builtin)
    for spec in specs:
        if spec in extra:
            continue
        try:
            make_policy(spec, extra)
        except PolicyError as exc:
            raise PolicyError(_unusable(spec, exc, extra)) from None


def _unusable(spec: str, exc: PolicyError, extra: Iterable[str] = ()) -> str:
    """Why ``spec`` cannot be used, always with the valid specs."""
    msg = f"cannot use policy {spec!r}: {exc}"
    if "valid specs:" in msg:
        return msg
    return f"{msg}; valid specs: {specs_help(extra, shipped=_shipped_note() not in msg)}"


def check_fallback(fallback: str) -> None:
    """``policy.fallback``: "" (none) or a built-in policy that takes no argument (a file could
    fail as the spec did). Raises :class:`PolicyError` saying which ones."""
    if not fallback:
        return
    try:
        if ":" in fallback or fallback in ("learned", "qlearn"):
            raise PolicyError(f"{fallback!r} takes a file")
        make_policy(fallback)
    except PolicyError:
        names = [u for u in valid_specs() if ":" not in u]
        raise PolicyError(f"expected \"\" (no fallback) or a built-in policy without a file: "
                          f"{', '.join(names)}; got {fallback!r}") from None


def open_policy(spec: str, fallback: str = "") -> Policy:
    """The policy for ``spec``, for the daemon's start.

    A spec that cannot be used raises :class:`PolicyError` (the daemon does not start), unless
    ``fallback`` names a policy (``policy.fallback``): then the reason is logged as a warning and
    ``fallback`` runs.
    """
    try:
        return make_policy(spec)
    except PolicyError as exc:
        if not fallback:
            raise PolicyError(f"{_unusable(spec, exc)}. Fix --policy (policy.spec), or set "
                              "policy.fallback to a baseline to run instead") from None
        logging.getLogger("edgesched.server").warning("%s; falling back to %s", exc, fallback)
        return make_policy(fallback)


register("performance", _plain("performance", Performance))
register("powersave", _plain("powersave", Powersave))
register("ondemand", _plain("ondemand", Ondemand))
register("conservative", _plain("conservative", Conservative))
register("schedutil", _plain("schedutil", Schedutil))
# the same governors with every request on the fastest cluster (and schedutil without util_est)
register("performance-big", _plain("performance-big", PerformanceBig))
register("powersave-big", _plain("powersave-big", PowersaveBig))
register("ondemand-big", _plain("ondemand-big", OndemandBig))
register("conservative-big", _plain("conservative-big", ConservativeBig))
register("schedutil-big", _plain("schedutil-big", SchedutilBig))
register("slack", _plain("slack", SlackPolicy))
register("slack-guarded", _plain("slack-guarded", GuardedSlack))


def _make_kernel(spec: str) -> Policy:
    """``kernel``: hands-off on a real board, the modelled stock kernel (``schedutil``) elsewhere
    (see :mod:`edgesched.policy.kernel`)."""
    from edgesched.policy.kernel import KernelPolicy

    if spec != "kernel":
        raise PolicyError(f"policy 'kernel' takes no argument, got {spec!r}; use 'kernel'")
    return KernelPolicy(make_policy("schedutil"))


register("kernel", _make_kernel)


def _make_learned(spec: str) -> Policy:
    from edgesched.policy.learned import load_learned

    arg = spec.split(":", 1)[1] if ":" in spec else ""
    if not arg:
        raise PolicyError("learned needs a policy: learned:NAME (a shipped one) or learned:PATH "
                          f"(NAME.npz with NAME.json); valid specs: {specs_help()}")
    return load_learned(resolve_learned_path(arg))


def _make_qlearn(spec: str) -> Policy:
    from edgesched.policy.qlearn import load_qtable

    path = spec.split(":", 1)[1] if ":" in spec else ""
    if not path:
        raise PolicyError("qlearn needs a trained table here: qlearn:PATH (`edgesched eval` "
                          "also accepts a bare qlearn and trains one in the simulator); "
                          f"valid specs: {specs_help()}")
    return load_qtable(path)


# numpy-only policy files, imported when first asked for
register("learned", _make_learned, usage="learned:NAME|PATH")
register("qlearn", _make_qlearn, usage="qlearn:PATH")
