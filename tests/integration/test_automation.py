"""Re-recycling when the oracle changes, driven tick by tick on a Dagster test instance:
an oracle observed again unchanged requests nothing; a changed model requests exactly the
shards it made stale (and what follows them), and those runs ask the oracle only what is
not in the cache."""

import dagster as dg
import pytest

from reflection_assets.definitions import defs
from reflection_assets.method.served import ServedIdentity, oracle_data_version
from reflection_assets.headless.status import asset_statuses
from tests.integration.test_reflection_assets import ALL, oracle, run, tagged  # noqa: F401 (fixtures)

RECORD_STAGES = [k for k in ALL if k.to_user_string() != "raw_dataset"]


def observe(instance):
    result = defs.resolve_job_def("observe_oracles").execute_in_process(instance=instance)
    assert result.success
    latest = instance.fetch_observations(dg.AssetKey("oracle"), limit=1).records[0]
    return latest.asset_observation.tags["dagster/data_version"]


def status(instance):
    return {s.asset: s for s in asset_statuses(instance, defs, "tagged", [k for k in ALL])}


class Ticks:
    def __init__(self, instance):
        self.instance, self.cursor = instance, None

    def __call__(self) -> dict[str, set[str]]:
        result = dg.evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {
            key.to_user_string(): {str(p) for p in result.get_requested_partitions(key)}
            for key in defs.resolve_asset_graph().materializable_asset_keys
            if result.get_num_requested(key)
        }


def test_only_a_changed_oracle_requests_only_its_stale_shards(tagged, oracle, monkeypatch):  # noqa: F811
    instance = tagged
    tick = Ticks(instance)
    first_version = observe(instance)
    run(instance, shards=["00", "02"])  # two of four shards recycled; 01 and 03 never were
    assert tick() == {}  # the first evaluation only sets the cursor

    for _ in range(3):  # the nightly observation finds the same oracle: nothing to do
        assert observe(instance) == first_version
        assert tick() == {}

    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o")
    assert observe(instance) != first_version
    stale = {"tagged|00", "tagged|02"}
    report = status(instance)
    assert report["raw_dataset"].stale == {} and report["raw_dataset"].materialized == 2
    why = {
        "reflected_instructions": ["oracle changed"],
        "reflected_responses": ["oracle changed", "upstream stale (reflected_instructions)"],
        "recycled_dataset": ["upstream stale (reflected_responses)"],
    }
    for name, reasons in why.items():
        assert report[name].stale == {"00": reasons, "02": reasons}
        assert report[name].missing == ["01", "03"] and report[name].failed == []
    assert tick() == {key.to_user_string(): stale for key in RECORD_STAGES}
    assert tick() == {}  # requested once, not again on the next tick

    # What the automation would launch: the stale shards, with the new model. Every request
    # is new (another model), and only the two stale shards' records are asked about.
    sent = oracle.request_count
    run(instance, keys=RECORD_STAGES, shards=["00", "02"])
    new_bodies = oracle.received[sent:]
    assert new_bodies and {b["model"] for b in new_bodies} == {"gpt-4o"}
    assert tick() == {}  # materialized: handled, nothing stale
    assert all(not s.stale for s in status(instance).values())

    # Back to the first model: stale again, and every answer is already in the cache; only
    # what failed for good with it (HTTP 400, never cached) is asked again.
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o-mini")
    assert observe(instance) == first_version
    assert tick() == {key.to_user_string(): stale for key in RECORD_STAGES}
    sent = oracle.request_count
    run(instance, keys=RECORD_STAGES, shards=["00", "02"])
    again = oracle.received[sent:]
    assert all("#reject" in b["messages"][-1]["content"] for b in again), [b["messages"][-1]["content"][:80] for b in again]


def test_observations_record_the_fingerprint_not_the_key(tagged, oracle):  # noqa: F811
    observe(tagged)
    event = tagged.fetch_observations(dg.AssetKey("oracle"), limit=1).records[0].asset_observation
    metadata = {k: v.value for k, v in event.metadata.items()}
    assert metadata["model"] == "gpt-4o-mini" and metadata["backend"] == "openai"
    assert metadata["api_key"] == "set" and "sk-test" not in str(metadata)
    # The data version hashes our settings' fingerprint and what the probe saw serve them.
    served = ServedIdentity.from_metadata(metadata)
    assert served is not None and served.model == "gpt-4o-mini" and metadata["probe"] == "on"
    assert event.tags["dagster/data_version"] == metadata["data_version"]
    assert metadata["data_version"] == oracle_data_version(metadata["fingerprint"], served) != metadata["fingerprint"]


@pytest.mark.parametrize("name", ["observe_oracles_nightly"])
def test_the_schedule_is_on_by_default(name):
    schedule = defs.get_schedule_def(name)
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.cron_schedule == "0 3 * * *"
    assert defs.get_sensor_def("recycle_stale").default_status == dg.DefaultSensorStatus.RUNNING


def test_a_run_records_the_oracle_it_used(tagged, oracle):  # noqa: F811
    """`reflection run` observes the oracle before its runs, so their provenance names the
    oracle version they used: a later observation of the same oracle (the nightly schedule)
    makes nothing stale and requests nothing."""
    tick = Ticks(tagged)
    run(tagged, shards=["01"])
    assert tick() == {}
    assert all(not s.stale for s in status(tagged).values())
    observe(tagged)
    assert all(not s.stale for s in status(tagged).values())
    assert tick() == {}


@pytest.mark.slow
def test_downstream_follows_a_changed_oracle(tagged, oracle, shared_artifacts, monkeypatch):  # noqa: F811
    """With the adapters materialized too, a new oracle requests the shards first; once
    they are re-materialized, the next tick requests the recycled adapter (its data came
    from the oracle), and never the baseline (raw data only)."""
    from reflection_assets.assets.partitions import DATASETS
    from reflection_assets.definitions import JOB_FOR_PARTITIONS
    from reflection_assets.headless.runner import run_dataset_partition

    monkeypatch.setenv("REFLECTION_ARTIFACTS", str(shared_artifacts))
    tick = Ticks(tagged)
    run(tagged)
    adapters = [dg.AssetKey("baseline_adapter"), dg.AssetKey("recycled_adapter")]
    [trained] = run_dataset_partition(
        tagged, defs, JOB_FOR_PARTITIONS[DATASETS], adapters, "tagged", "WARNING",
        {name.to_user_string(): {"max_steps": 1} for name in adapters},
    )
    assert trained.success, trained.error
    assert tick() == {}
    monkeypatch.setenv("REFLECTION_ORACLE_MODEL", "gpt-4o")
    observe(tagged)
    every_shard = {f"tagged|{shard:02d}" for shard in range(4)}
    assert tick() == {key.to_user_string(): every_shard for key in RECORD_STAGES}
    run(tagged, keys=RECORD_STAGES)  # what the automation launched
    assert tick() == {"recycled_adapter": {"tagged"}}
    assert tick() == {}
