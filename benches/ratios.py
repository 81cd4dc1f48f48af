#!/usr/bin/env python3
"""Print fleetwire/raw ratios from criterion's estimates of the last run.

    cargo bench --all-features --bench fleetwire && python3 benches/ratios.py
"""
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"

GROUPS = [
    # group, raw baseline, fleetwire, how the target reads
    ("publish_memory", "raw_rmp_serde_encode", "fleetwire_publish", "time ≤ 2.0× encode"),
    ("publish_redis_sequential", "raw_xadd", "fleetwire_publish", "ops/s ≥ 0.9× raw"),
    ("publish_redis_concurrent", "raw_xadd_x50", "fleetwire_publish_x50", "ops/s ≥ 0.9× raw"),
    ("publish_redis_batch64", "raw_pipeline_64_xadd", "fleetwire_publish_batch_64", "ops/s ≥ 0.9× raw"),
    ("consume_redis", "raw_xreadgroup_xack", "fleetwire_read_ack", "(no target)"),
    ("liveness_redis_is_alive_batch_10k", "raw_mget_10k", "fleetwire_is_alive_batch_10k", "time ≤ 1.2× raw"),
    ("registry_redis_heartbeat", "raw_pexpire", "fleetwire_heartbeat", "(no target)"),
    ("registry_redis_list_10k", "raw_mget_10k_known_keys", "fleetwire_list_10k", "(figure)"),
]


def median_ns(group, bench):
    est = root / group / bench / "new" / "estimates.json"
    return json.loads(est.read_text())["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1e6:.2f} ms" if ns >= 1e6 else f"{ns / 1e3:.1f} µs" if ns >= 1e3 else f"{ns:.0f} ns"


print("| group | raw | fleetwire | fleetwire time / raw time | target |")
print("|---|---|---|---|---|")
for group, raw, fw, target in GROUPS:
    try:
        r, f = median_ns(group, raw), median_ns(group, fw)
    except FileNotFoundError:
        continue
    print(f"| {group} | {fmt(r)} | {fmt(f)} | {f / r:.2f}× | {target} |")
