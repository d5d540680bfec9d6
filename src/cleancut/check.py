"""``cleancut check``: is every recovery point in the repository whole, and the repository sound?

It answers with a few restic calls, whatever the number of RPs:

1. ``restic check`` (with ``--read-data-subset`` when asked): restic's own structure check,
   and a read-back of that part of the data;
2. one snapshot listing against the manifests: every member snapshot a manifest names must
   exist (else it is **missing**, and that RP does not restore whole), and every member
   snapshot must be named by a manifest (else it is an **orphan**: an interrupted backup or
   forget; ``cleancut forget`` removes those whose RP has no manifest);
3. the sizes, one ``restic find`` for all members: the files of each member snapshot must
   add up to the ``bytes_processed`` its manifest recorded, so a manifest cannot point at
   some other snapshot (:meth:`cleancut.mover.base.Mover.snapshot_sizes`).

The manifests themselves come from the catalog when it holds one under the same manifest
snapshot id: restic's ids are hashes, and a snapshot's id covers its tree, which names the
manifest's content by its hash, so the catalog's copy is the content that snapshot stores
(restic check, step 1, vouches that its blobs are there). Only the others — written since
on another machine, or never committed by cleancut — are read from the repository, one
``restic dump`` each; one that does not parse is an **unreadable manifest**.

The core never prints: :func:`run_check` returns a :class:`CheckReport`, which the CLI
renders and a monitoring wrapper can record.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cleancut.catalog import Catalog
from cleancut.errors import CatalogError, ConfigError, MoverError
from cleancut.forget import AppSnapshots, list_app_snapshots
from cleancut.manifest import MANIFEST_FILENAME, MANIFEST_TAG, Manifest
from cleancut.mover.base import Mover, RepositoryCheck

SUBSET_FORMS = (
    "N% with 0 < N <= 100 (e.g. 5%), n/t with 1 <= n <= t <= 256 (e.g. 1/10: the first of "
    "ten groups of packs), or a size such as 500M (unit b, K, M, G or T; none means bytes)"
)
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)%")
_GROUP = re.compile(r"(\d+)/(\d+)")
_SIZE = re.compile(r"(\d+)([bkmgt]?)", re.IGNORECASE)
_MAX_GROUPS = 256  # restic's limit: it picks a pack's group by its id's first byte
_SHOWN_OUTPUT = 4


def parse_read_data_subset(value: str | None) -> str | None:
    """The ``--read-data-subset`` value when restic 0.14 would take it, else a ConfigError
    (checked here so that a typo fails before the lock and restic's exclusive lock)."""
    if value is None:
        return None
    text = value.strip()
    percent = _PERCENT.fullmatch(text)
    group = _GROUP.fullmatch(text)
    size = _SIZE.fullmatch(text)
    if percent is not None:
        valid = 0 < float(percent.group(1)) <= 100
    elif group is not None:
        part, groups = int(group.group(1)), int(group.group(2))
        valid = 1 <= part <= groups <= _MAX_GROUPS
    else:
        valid = size is not None and int(size.group(1)) > 0
    if not valid:
        raise ConfigError(
            f"{value!r} is not a part of the data restic can read back",
            key="--read-data-subset",
            hint=f"give {SUBSET_FORMS}",
        )
    return text


@dataclass(frozen=True)
class MemberRef:
    """One member of one RP, as its manifest names it (``snapshot`` None: it names none)."""

    rp: str
    host: str
    resource: str
    snapshot: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rp": self.rp,
            "host": self.host,
            "resource": self.resource,
            "snapshot": self.snapshot,
        }


@dataclass(frozen=True)
class SizeMismatch:
    """A member snapshot whose files do not add up to what the manifest recorded."""

    member: MemberRef
    recorded: int
    stored: int


@dataclass(frozen=True)
class Orphan:
    """A member snapshot no manifest names; ``has_manifest``: its RP has one (that names
    another snapshot for the resource), so ``cleancut forget`` leaves it alone."""

    snapshot: str
    rp: str | None
    host: str | None
    resource: str | None
    has_manifest: bool


@dataclass(frozen=True)
class UnreadableManifest:
    """A manifest snapshot whose file could not be read or is not a manifest of its RP."""

    snapshot: str
    rp: str
    reason: str


@dataclass
class CheckReport:
    """What one check found; :attr:`problems` says each finding and what to do about it."""

    app: str
    repository: RepositoryCheck
    rps: int = 0
    members: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    missing: list[MemberRef] = field(default_factory=list)
    size_mismatches: list[SizeMismatch] = field(default_factory=list)
    unreadable_manifests: list[UnreadableManifest] = field(default_factory=list)
    sizes_error: str | None = None
    manifests_read: int = 0  # from the repository; the others came from the catalog
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problems(self) -> list[str]:
        """One line per finding: the RP, host/resource and snapshot, and the remedy."""
        lines = [] if self.repository.ok else [_restic_problem(self.repository)]
        lines += [_unreadable_problem(u) for u in self.unreadable_manifests]
        lines += [_missing_problem(m) for m in self.missing]
        lines += [_size_problem(s) for s in self.size_mismatches]
        lines += [_orphan_problem(o) for o in self.orphans]
        if self.sizes_error is not None:
            lines.append(
                f"the sizes of the member snapshots could not be read, so they were not "
                f"compared with the manifests: {self.sizes_error}"
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "ok": self.ok,
            "rps": self.rps,
            "members": self.members,
            "orphans": len(self.orphans),
            "missing": len(self.missing),
            "size_mismatches": len(self.size_mismatches),
            "unreadable_manifests": len(self.unreadable_manifests),
            "restic_check": {
                "ok": self.repository.ok,
                "duration": round(self.repository.seconds, 3),
                "read_data_subset": self.repository.read_data_subset,
                "output_tail": self.repository.output,
            },
            "sizes_error": self.sizes_error,
            "manifests_read": self.manifests_read,
            "duration": round(self.seconds, 3),
            "problems": self.problems,
            "findings": {
                "orphans": [
                    {
                        "snapshot": o.snapshot,
                        "rp": o.rp,
                        "host": o.host,
                        "resource": o.resource,
                        "rp_has_manifest": o.has_manifest,
                    }
                    for o in self.orphans
                ],
                "missing": [m.as_dict() for m in self.missing],
                "size_mismatches": [
                    {**s.member.as_dict(), "recorded": s.recorded, "stored": s.stored}
                    for s in self.size_mismatches
                ],
                "unreadable_manifests": [
                    {"snapshot": u.snapshot, "rp": u.rp, "reason": u.reason}
                    for u in self.unreadable_manifests
                ],
            },
        }


def run_check(
    app: str,
    mover: Mover,
    *,
    catalog: Catalog | None = None,
    read_data_subset: str | None = None,
) -> CheckReport:
    """Check the repository and every RP of ``app`` in it (the caller holds the run lock)."""
    started = time.monotonic()
    report = CheckReport(app, mover.check(read_data_subset))
    stored = list_app_snapshots(app, mover)
    manifests = _manifests(app, stored, catalog, mover, report)
    report.rps = len(manifests)
    named, recorded = _members(manifests, stored, report)
    _compare_sizes(recorded, mover, report)
    report.orphans = _orphans(stored, named, report)
    report.seconds = time.monotonic() - started
    return report


def _manifests(
    app: str, stored: AppSnapshots, catalog: Catalog | None, mover: Mover, report: CheckReport
) -> dict[str, list[Manifest]]:
    """rp -> its readable manifests (more than one when a commit was retried)."""
    known = _catalog_copies(app, catalog)
    readable: dict[str, list[Manifest]] = {}
    for rp, snapshot_ids in stored.manifests.items():
        for snapshot_id in snapshot_ids:
            manifest = known.get((rp, snapshot_id))
            if manifest is None:
                report.manifests_read += 1
                manifest = _read_manifest(app, rp, snapshot_id, mover, report)
            if manifest is not None:
                readable.setdefault(rp, []).append(manifest)
    return readable


def _catalog_copies(app: str, catalog: Catalog | None) -> dict[tuple[str, str], Manifest]:
    if catalog is None:
        return {}
    try:
        entries = catalog.list(app)
    except CatalogError:
        return {}  # an unreadable catalog only costs reading every manifest
    return {(e.rp_id, e.manifest_snapshot): e.manifest for e in entries}


def _read_manifest(
    app: str, rp: str, snapshot_id: str, mover: Mover, report: CheckReport
) -> Manifest | None:
    try:
        data = mover.read_file(snapshot_id, MANIFEST_FILENAME)
        manifest = Manifest.model_validate_json(data)
    except MoverError as exc:
        reason = f"restic could not read {MANIFEST_FILENAME}: {exc.message}"
    except ValidationError as exc:
        reason = f"{exc.error_count()} errors, the first: {exc.errors()[0]['msg']}"
    else:
        if manifest.app == app and manifest.rp_id == rp:
            return manifest
        reason = f"it is the manifest of {manifest.app}/{manifest.rp_id}, not {app}/{rp}"
    report.unreadable_manifests.append(UnreadableManifest(snapshot_id, rp, reason))
    return None


def _members(
    manifests: dict[str, list[Manifest]], stored: AppSnapshots, report: CheckReport
) -> tuple[set[str], dict[str, list[tuple[MemberRef, int]]]]:
    """The member snapshots the manifests name, and per existing one what was recorded."""
    present = {s.snapshot_id for s in stored.member_snapshots}
    named: set[str] = set()
    recorded: dict[str, list[tuple[MemberRef, int]]] = {}
    seen: set[MemberRef] = set()
    for rp, copies in manifests.items():
        for manifest in copies:
            for member in manifest.members:
                ref = MemberRef(rp, member.host, member.resource, member.repository_snapshot)
                if ref in seen:
                    continue
                seen.add(ref)
                if ref.snapshot is None or ref.snapshot not in present:
                    report.missing.append(ref)
                    continue
                named.add(ref.snapshot)
                recorded.setdefault(ref.snapshot, []).append((ref, member.bytes_processed))
    report.members = len(seen)
    return named, recorded


def _compare_sizes(
    recorded: dict[str, list[tuple[MemberRef, int]]], mover: Mover, report: CheckReport
) -> None:
    if not recorded:
        return
    try:
        sizes = mover.snapshot_sizes(list(recorded))
    except MoverError as exc:
        report.sizes_error = exc.message
        return
    for snapshot_id, refs in recorded.items():
        stored = sizes.get(snapshot_id)
        for ref, expected in refs:
            if stored is None:  # listed a moment ago, gone now: forgotten meanwhile
                report.missing.append(ref)
            elif stored != expected:
                report.size_mismatches.append(SizeMismatch(ref, expected, stored))


def _orphans(stored: AppSnapshots, named: set[str], report: CheckReport) -> list[Orphan]:
    """Member snapshots no manifest names; an RP whose manifest is unreadable is not
    judged (its members are reported with it)."""
    unknown = {u.rp for u in report.unreadable_manifests}
    orphans = []
    for snapshot in stored.member_snapshots:
        rp = snapshot.tags.get("rp")
        if snapshot.snapshot_id in named or rp in unknown:
            continue
        orphans.append(
            Orphan(
                snapshot.snapshot_id,
                rp,
                snapshot.tags.get("host"),
                snapshot.tags.get("resource"),
                has_manifest=rp in stored.manifests,
            )
        )
    return orphans


# -- the problem lines -----------------------------------------------------------------


def _restic_problem(check: RepositoryCheck) -> str:
    lines = [line for line in check.output if "%" not in line or "error" in line.lower()]
    shown = "; ".join(lines[-_SHOWN_OUTPUT:]) or "no output"
    flag = f" --read-data-subset {check.read_data_subset}" if check.read_data_subset else ""
    return (
        f"restic check{flag} found the repository damaged or could not finish: {shown}. "
        "Run it by hand for the full list; restic's documentation on repairing a repository "
        "says what each error needs"
    )


def _unreadable_problem(found: UnreadableManifest) -> str:
    return (
        f"RP {found.rp}: manifest snapshot {found.snapshot} is not a valid manifest "
        f"({found.reason}); the RP cannot be listed or restored. Remove it with "
        f"`restic forget {found.snapshot}` (the next `cleancut forget` then removes its "
        "members as leftovers) or repair it"
    )


def _missing_problem(ref: MemberRef) -> str:
    what = (
        f"names no snapshot of {ref.host}/{ref.resource}"
        if ref.snapshot is None
        else f"member {ref.host}/{ref.resource}: snapshot {ref.snapshot} is not in the repository"
    )
    return (
        f"RP {ref.rp}: {what}, so the RP cannot be restored whole; restore another one "
        "(`cleancut points`) and take a new backup. To drop this RP, forget its manifest "
        f"(`restic snapshots --tag {MANIFEST_TAG},rp={ref.rp}` lists it); the next "
        "`cleancut forget` then removes its other members"
    )


def _size_problem(found: SizeMismatch) -> str:
    ref = found.member
    return (
        f"RP {ref.rp}: member {ref.host}/{ref.resource}: snapshot {ref.snapshot} holds "
        f"{found.stored} bytes of files, the manifest recorded {found.recorded}: it is not "
        f"the snapshot the backup stored; run `cleancut verify {ref.rp}` and take a new backup"
    )


def _orphan_problem(orphan: Orphan) -> str:
    where = f"rp {orphan.rp}, {orphan.host}/{orphan.resource}"
    if orphan.has_manifest:
        return (
            f"orphan member snapshot {orphan.snapshot} ({where}): its RP's manifest names "
            f"another snapshot (an upload that was retried); `restic forget {orphan.snapshot}` "
            "removes it"
        )
    return (
        f"orphan member snapshot {orphan.snapshot} ({where}): no manifest names it (an "
        "interrupted backup or forget); `cleancut forget` removes it"
    )
