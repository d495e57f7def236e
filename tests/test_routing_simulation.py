"""The routing simulator's bookkeeping, on short runs (a few seconds in all)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.routing_sim.scenarios import policies, scenarios
from bench.routing_sim.simulate import main
from bench.routing_sim.simulation import ClusterEvent, Scenario, Simulation, simulate
from bench.routing_sim.workload import make_sessions

DURATION = 40.0


def scenario(name: str) -> Scenario:
    return next(s for s in scenarios(DURATION, seed=1) if s.name == name)


def planned_calls(sc: Scenario) -> int:
    return sum(len(wf.appends) for s in make_sessions(sc.workload) for wf in s.workflows)


@pytest.mark.parametrize("name", ["skew", "hot_session", "replica_death", "scale_up_down"])
def test_every_call_completes_and_hits_stay_under_the_ceiling(name: str) -> None:
    sc = scenario(name)
    for pname in ("prefix_locality", "power_of_two"):
        r = simulate(sc, policies(sc.service)[pname], pname)
        assert r.requests == planned_calls(sc) > 0
        assert 0.0 <= r.hit_ratio <= r.best_hit_ratio + 1e-9 <= 1.0
        assert r.p50_s <= r.p95_s


def test_killed_replica_work_is_retried_elsewhere() -> None:
    # Kill while the pool is busy so that requests are in flight on the victim.
    sc = dataclasses.replace(scenario("skew"), events=(ClusterEvent(15.0, "kill", "r0"),),
                             service=dataclasses.replace(scenario("skew").service, prefill_tok_s=800.0))
    sim = Simulation(sc, policies(sc.service)["least_loaded"])
    sim.run()
    assert sim.retries > 0
    assert len(sim.done) == planned_calls(sc)
    assert all(job.replica_id != "r0" for job, _ in sim.done if job.attempt > 0)


def test_prefix_locality_beats_power_of_two_under_skew() -> None:
    sc = scenario("skew")
    ours = simulate(sc, policies(sc.service)["prefix_locality"], "ours")
    p2c = simulate(sc, policies(sc.service)["power_of_two"], "p2c")
    assert ours.hit_ratio > p2c.hit_ratio + 0.2
    assert ours.p95_s < p2c.p95_s


def test_simulation_is_deterministic() -> None:
    sc = scenario("two_ingress")
    a = simulate(sc, policies(sc.service)["prefix_locality"], "x")
    b = simulate(sc, policies(sc.service)["prefix_locality"], "x")
    assert a == b


def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--duration", "10", "--scenarios", "uniform", "--policies", "least_loaded"]) == 0
    out = capsys.readouterr().out
    assert "| uniform | least_loaded |" in out
