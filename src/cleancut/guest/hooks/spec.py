"""One hook in a format-neutral shape: what each importer (native, Azure, GCP, qemu-ga) yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["native", "azure", "gcp", "qemu_ga"]
Phase = Literal["pre", "post"]


@dataclass(frozen=True)
class HookSpec:
    """A pre-/post-script pair and how to run it, whatever file format declared it.

    ``pre``/``post`` are argv lists whose first item is the absolute path of the script
    (no shell, no PATH lookup). ``freeze`` is False only when the format says so (Azure's
    ``fsFreezeEnabled = false``): the agent then must not freeze for this host. ``details``
    holds extras worth recording (the config file, Azure's poll time, ...). ``volumes``
    names the volumes the hook quiesces; None means every volume of the host, which is
    what the imported formats mean (their scripts quiesce the whole machine).
    """

    name: str
    source: Source
    pre: list[str] | None
    post: list[str] | None
    timeout: float
    pre_retries: int = 0
    post_retries: int = 0
    pre_sha256: str | None = None
    post_sha256: str | None = None
    continue_on_failure: bool = False
    freeze: bool = True
    volumes: tuple[str, ...] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def argv(self, phase: Phase) -> list[str] | None:
        """The argv of ``phase``'s script, or None when the hook has none."""
        return self.pre if phase == "pre" else self.post

    def retries(self, phase: Phase) -> int:
        """How many times ``phase``'s script is re-run after a failure."""
        return self.pre_retries if phase == "pre" else self.post_retries

    def sha256(self, phase: Phase) -> str | None:
        """The pinned SHA-256 of ``phase``'s script, if any."""
        return self.pre_sha256 if phase == "pre" else self.post_sha256
