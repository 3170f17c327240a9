"""The project's exception tree.

Low-level errors (OSError from sysfs, JSON/TOML decode errors, interpreter errors) are translated
once, at the boundary where they happen, into one of these. Messages say what to do.
"""

from __future__ import annotations


class EdgeschedError(Exception):
    """Base class of every error this package raises on purpose."""


class ProfileError(EdgeschedError):
    """A device profile file is missing, malformed or inconsistent."""

    def __init__(self, source: str, field: str, expected: str) -> None:
        self.source = source
        self.field = field
        self.expected = expected
        super().__init__(f"{source}: field {field!r}: expected {expected}")


class ConfigError(EdgeschedError):
    """A configuration or scenario file is malformed (names the file and the key)."""


class QueueFullError(EdgeschedError):
    """The request queue refused a request because a bound (count or bytes) is reached."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PolicyError(EdgeschedError):
    """A policy spec or policy file cannot be used."""


class PolicyMismatchError(PolicyError):
    """A policy file was trained for another observation version, action map or device."""


class CpufreqError(EdgeschedError):
    """A cpufreq sysfs operation failed; the message names the file and what to do."""

    def __init__(self, message: str, path: str = "", errno_code: int | None = None) -> None:
        self.path = path
        self.errno_code = errno_code
        super().__init__(message)


class ModelError(EdgeschedError):
    """A model file cannot be loaded or a request does not fit a model."""


class AdmissionError(EdgeschedError):
    """The daemon refused an inference request before queueing it (maps to an HTTP status)."""

    def __init__(self, status: int, reason: str, retry_after_s: float | None = None,
                 outcome: str = "") -> None:
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.outcome = outcome
        """Set when the refusal is one of the queue's outcomes (``shutting_down``)."""
        super().__init__(reason)


class ClientError(EdgeschedError):
    """The daemon answered a client request with an error status (or could not be reached)."""

    def __init__(self, status: int, reason: str, outcome: str = "") -> None:
        self.status = status
        self.reason = reason
        self.outcome = outcome
        super().__init__(f"HTTP {status}: {reason}" if status else reason)


class CpufreqUnavailableError(CpufreqError):
    """No usable cpufreq policy under the sysfs root (no driver, wrong root, or wrong profile)."""


class CpufreqModeError(CpufreqError):
    """The requested write mode is not possible on this kernel (e.g. no ``userspace`` governor)."""


class CpufreqPermissionError(CpufreqError):
    """A cpufreq file cannot be written (EACCES/EPERM)."""


class CpufreqRejectedError(CpufreqError):
    """The kernel refused a value (EINVAL) or was busy (EBUSY); names the file and the value."""


class CpufreqVerifyError(CpufreqError):
    """A write was accepted but reading the file back gave another value."""


class CpufreqPolicyGoneError(CpufreqError):
    """A cpufreq policy directory vanished (CPU hotplug); the policy is skipped."""


class CpufreqStateError(CpufreqError):
    """The saved-settings state file cannot be written or read; nothing was changed."""


class CpufreqBusyError(CpufreqStateError):
    """Another process holds the cpufreq lease on the same state directory."""


class MeterError(EdgeschedError):
    """An energy meter cannot be read."""
