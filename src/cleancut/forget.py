"""``cleancut forget``: apply ``[retention]`` to whole recovery points.

The rules (:mod:`cleancut.retention`) decide per RP from the catalog's manifests. A
forgotten RP is then removed in the order that never leaves a partial one listed:

1. its catalog row goes (``points`` stops listing it; this is the moment it ends);
2. its manifest snapshot goes (a catalog rebuild cannot bring it back);
3. its member snapshots go, together with every **leftover** — a member snapshot whose RP
   has no manifest (an interrupted backup, or a forget stopped between 2 and 3).

Steps 2 and 3 are one ``restic forget`` call each, whatever the number of RPs; ``--prune``
adds one ``restic prune``. A forget stopped at any moment therefore leaves RPs that are
whole (each restores) and, at worst, leftovers the next forget removes. The application's
run lock is held throughout, so no backup of it runs meanwhile on this machine (its
uploaded members would look like leftovers); restic's own lock keeps other machines'
backups and this forget apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cleancut.catalog import Catalog, CatalogEntry
from cleancut.config.application import Retention
from cleancut.manifest import MANIFEST_TAG
from cleancut.mover.base import Mover, StoredSnapshot
from cleancut.retention import Decision, Point, Policy, decide

Say = Callable[[str], None]


def policy_of(retention: Retention) -> Policy:
    """The retention rules of the application file."""
    return Policy(**retention.model_dump())


@dataclass
class ForgetPlan:
    """What a forget would do: one decision per RP, and the snapshots behind each."""

    app: str
    decisions: list[Decision]
    entries: dict[str, CatalogEntry]
    manifests: dict[str, list[str]]  # rp -> its manifest snapshot ids
    members: dict[str, list[str]]  # rp -> its member snapshot ids
    leftovers: list[StoredSnapshot]
    rebuilt: bool = False
    restic_calls: int = 1  # the snapshot listing

    @property
    def forgotten(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    def as_dict(self) -> dict[str, Any]:
        def rp(decision: Decision) -> dict[str, Any]:
            point = decision.point
            return {
                "rp": point.rp_id,
                "created_at": point.created_at.isoformat(),
                "level": point.level,
                "why": decision.why,
                "snapshots": len(self.manifests.get(point.rp_id, []))
                + len(self.members.get(point.rp_id, [])),
            }

        return {
            "app": self.app,
            "kept": [rp(d) for d in self.kept],
            "forgotten": [rp(d) for d in self.forgotten],
            "leftovers": [
                {
                    "snapshot": s.snapshot_id,
                    "rp": s.tags.get("rp"),
                    "host": s.tags.get("host"),
                    "resource": s.tags.get("resource"),
                    "time": s.time.isoformat(),
                }
                for s in self.leftovers
            ],
            "catalog_rebuilt": self.rebuilt,
        }


@dataclass
class ForgetResult:
    """What a forget did."""

    plan: ForgetPlan
    dry_run: bool
    pruned: bool = False
    removed_snapshots: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "dry_run": self.dry_run,
            "pruned": self.pruned,
            "removed_snapshots": len(self.removed_snapshots),
            "restic_calls": self.plan.restic_calls,
        }


@dataclass
class AppSnapshots:
    """An application's snapshots in the repository, grouped by the recovery point they tag."""

    manifests: dict[str, list[str]]  # rp -> its manifest snapshot ids
    members: dict[str, list[str]]  # rp -> its member snapshot ids
    member_snapshots: list[StoredSnapshot]

    @property
    def leftovers(self) -> list[StoredSnapshot]:
        """Member snapshots whose RP has no manifest: an interrupted backup or forget."""
        return [s for s in self.member_snapshots if s.tags.get("rp") not in self.manifests]


def list_app_snapshots(app: str, mover: Mover) -> AppSnapshots:
    """One snapshot listing, split into manifests and members (snapshots without an RP
    tag are not cleancut's and are left out)."""
    stored = AppSnapshots({}, {}, [])
    for snapshot in mover.find({"app": app}):
        rp = snapshot.tags.get("rp")
        if rp is None:
            continue
        if MANIFEST_TAG in snapshot.tags:
            stored.manifests.setdefault(rp, []).append(snapshot.snapshot_id)
        elif "cleancut" in snapshot.tags:
            stored.members.setdefault(rp, []).append(snapshot.snapshot_id)
            stored.member_snapshots.append(snapshot)
    return stored


def plan_forget(app: str, policy: Policy, catalog: Catalog, mover: Mover) -> ForgetPlan:
    """Decide per RP; the catalog is rebuilt first when it does not match the repository."""
    stored = list_app_snapshots(app, mover)
    manifests = stored.manifests
    entries = {entry.rp_id: entry for entry in catalog.list(app)}
    rebuilt = False
    calls = 1
    if set(entries) != set(manifests):
        catalog.rebuild(app, mover)  # reads every manifest: the repository is the truth
        calls += 1 + len(manifests)
        entries = {entry.rp_id: entry for entry in catalog.list(app)}
        rebuilt = True
    points = [Point(e.rp_id, e.created_at, e.level) for e in entries.values()]
    return ForgetPlan(
        app,
        decide(points, policy),
        entries,
        manifests,
        stored.members,
        stored.leftovers,
        rebuilt,
        calls,
    )


def apply_forget(
    plan: ForgetPlan,
    catalog: Catalog,
    mover: Mover,
    *,
    prune: bool = False,
    say: Say = lambda _text: None,
) -> ForgetResult:
    """Remove the forgotten RPs (catalog row, manifest, members) and the leftovers."""
    result = ForgetResult(plan, dry_run=False)
    gone = [d.point.rp_id for d in plan.forgotten]
    if gone:
        catalog.remove(plan.app, gone)
        say(f"forgetting {len(gone)} recovery points of {plan.app}: their manifests first")
        manifest_ids = [sid for rp in gone for sid in plan.manifests.get(rp, [])]
        mover.forget(manifest_ids)
        plan.restic_calls += 1
        result.removed_snapshots += manifest_ids
    member_ids = [sid for rp in gone for sid in plan.members.get(rp, [])]
    member_ids += [s.snapshot_id for s in plan.leftovers]
    if member_ids:
        say(f"removing {len(member_ids)} member snapshots ({len(plan.leftovers)} leftovers)")
        mover.forget(member_ids)
        plan.restic_calls += 1
        result.removed_snapshots += member_ids
    if prune:
        say("pruning: reclaiming the space of the forgotten snapshots")
        mover.prune()
        plan.restic_calls += 1
        result.pruned = True
    return result
