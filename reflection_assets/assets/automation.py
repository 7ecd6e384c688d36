"""When the oracle changes, re-recycle what it made, and only that.

Declarative automation, not a hand-written sensor: Dagster already knows, per partition,
which upstream data version each materialization consumed, and re-evaluates that
incrementally every tick. The one condition below, on every stage after raw_dataset, says:
re-materialize a partition that exists when something it depends on got a new *data
version* (the oracle's fingerprint, a shard's content), and let what is downstream follow
in the same tick. A partition never materialized stays untouched (materializing it is a
choice, and may cost money); an observation that finds the same oracle changes nothing."""

import dagster as dg

AC = dg.AutomationCondition

UPSTREAM_VERSION_CHANGED = AC.any_deps_match(AC.data_version_changed() | AC.will_be_requested()).with_label(
    "an upstream data version changed"
)

STALE_ONLY = (
    UPSTREAM_VERSION_CHANGED.since_last_handled()
    & ~AC.missing()
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("re-materialize stale partitions")

# The oracle and the judge are observed on this cron (UTC), by the `observe_oracles` schedule.
OBSERVE_CRON = "0 3 * * *"
