"""The asset graph as a reviewable snapshot: a change to keys, groups, dependencies (with their partition mappings),
partitions, automation, checks and their blocking flags, or the jobs' selections shows up as a diff of
``asset_graph.json``. After a deliberate change, regenerate it with ``SHOPSEQ_UPDATE_SNAPSHOT=1 python -m pytest
tests/unit/test_graph_snapshot.py`` and commit the file with the change."""

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("asset_graph.json")


def graph_snapshot() -> dict:
    from workflows.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": {
                parent.to_user_string(): repr(node.partition_mappings[parent])
                if parent in node.partition_mappings
                else "default"
                for parent in sorted(node.parent_keys)
            },
            "partitions": str(node.partitions_def) if node.partitions_def else None,
            "backfill_policy": str(node.backfill_policy) if node.backfill_policy else None,
            "automation": node.automation_condition.get_label() or type(node.automation_condition).__name__
            if node.automation_condition
            else None,
            "checks": {check.name: graph.get_check_spec(check).blocking for check in sorted(node.check_keys, key=str)},
        }
    jobs = {
        job.name: sorted(key.to_user_string() for key in job.asset_layer.executable_asset_keys)
        for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name)
        if not job.name.startswith("__")
    }
    return {"assets": assets, "jobs": jobs}


def test_the_asset_graph_matches_its_snapshot():
    current = json.dumps(graph_snapshot(), indent=1, sort_keys=True) + "\n"
    if os.environ.get("SHOPSEQ_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with SHOPSEQ_UPDATE_SNAPSHOT=1 to write {SNAPSHOT}"
    assert current == SNAPSHOT.read_text(), (
        "the asset graph changed: review the diff, then regenerate the snapshot with SHOPSEQ_UPDATE_SNAPSHOT=1"
    )
