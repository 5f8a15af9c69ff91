"""Decision points from Python: tasker-core's conditional approval template (the copy in
``../shared/compat`` when it is there, and one of that format written here) run with handlers
written the way its comments describe, every route checked, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import tasker_core

from conftest import step_of

SHARED = Path(__file__).resolve().parents[3] / "shared" / "compat"
COMPAT = SHARED / "core_conditional_approval_decision_point.yaml"

# The same workflow in tasker-core's format, written for this project's tests.
OWN = (Path(__file__).resolve().parents[2] / "tests" / "templates"
       / "tasker_core_approval_routing.yaml").read_text()

HANDLERS = "ConditionalApproval::StepHandlers::"
APPROVALS = ("auto_approve", "manager_approval", "finance_review")


def expected_route(amount: float) -> list[str]:
    """The template's comments: below 1,000 auto-approve; below 5,000 a manager; above, a
    manager and finance."""
    if amount < 1000:
        return ["auto_approve"]
    if amount < 5000:
        return ["manager_approval"]
    return ["manager_approval", "finance_review"]


class ValidateRequestHandler:
    def call(self, step):
        ctx = step.context
        if ctx["amount"] <= 0 or not ctx["requester"]:
            raise tasker_core.PermanentError("invalid request")
        return {"validated": True, "amount": ctx["amount"]}


class RoutingDecisionHandler:
    """The decision point: routes by the amount against the thresholds in its config."""

    def __init__(self, config):
        self.thresholds = (config or {}).get("thresholds", {"small": 1000, "large": 5000})

    def call(self, step):
        amount = step.inputs["validate_request"]["amount"]
        if amount < self.thresholds["small"]:
            route = ["auto_approve"]
        elif amount < self.thresholds["large"]:
            route = ["manager_approval"]
        else:
            route = ["manager_approval", "finance_review"]
        return tasker_core.Decision(route, result={"route": route, "amount": amount})


def approval(by: str):
    def handler(step):
        return {"approved": True, "by": by, "amount": step.inputs["routing_decision"]["amount"]}
    return handler


def finalize(step):
    # The convergence sees the approvals that ran, and only them.
    approvals = sorted(step.inputs)
    assert all(step.inputs[a]["approved"] for a in approvals)
    return {"approved": True, "approvals": approvals}


def worker_for(engine: tasker_core.Engine, route=None) -> tasker_core.Worker:
    worker = tasker_core.Worker(engine, concurrency=3)
    worker.register(HANDLERS + "ValidateRequestHandler", lambda s: ValidateRequestHandler().call(s))
    worker.register(HANDLERS + "RoutingDecisionHandler",
                    route or (lambda s: RoutingDecisionHandler(s.config).call(s)))
    worker.register(HANDLERS + "AutoApproveHandler", approval("auto"))
    worker.register(HANDLERS + "ManagerApprovalHandler", approval("manager"))
    worker.register(HANDLERS + "FinanceReviewHandler", approval("finance"))
    worker.register(HANDLERS + "FinalizeApprovalHandler", finalize)
    return worker


def sources() -> list:
    shared = pytest.param(COMPAT, id="shared-compat", marks=pytest.mark.skipif(
        not COMPAT.exists(), reason="../shared/compat is not beside the repository"))
    return [pytest.param(OWN, id="own"), shared]


def run_every_route(engine: tasker_core.Engine, source) -> None:
    text = source.read_text() if isinstance(source, Path) else source
    summary = engine.register_template(text)
    assert summary["format"] == "tasker_core"
    assert not [w for w in summary["warnings"] if "type" in w], summary["warnings"]
    amounts = [250.0, 999.99, 1000.0, 4999.0, 5000.0, 25000.0]
    tasks = {engine.create_task("conditional_approval", "approval_routing",
                                context={"amount": a, "requester": "ada", "purpose": "laptop"}): a
             for a in amounts}
    counts = worker_for(engine).run_until_idle(timeout=60)
    assert counts["idle"] and counts["failed"] == 0, counts
    for task_id, amount in tasks.items():
        task = engine.task(task_id)
        route = expected_route(amount)
        assert task["status"] == "complete", (amount, task["status"])
        decision = step_of(task, "routing_decision")
        assert decision["type"] == "decision"
        assert decision["chosen"] == route, amount
        assert decision["result"] == {"route": route, "amount": amount}
        for name in APPROVALS:
            s = step_of(task, name)
            if name in route:
                assert s["status"] == "complete" and s["result"]["amount"] == amount, (amount, s)
            else:
                assert s["status"] == "skipped", (amount, name, s["status"])
                assert s["skip_reason"] == "not chosen", (amount, name)
        final = step_of(task, "finalize_approval")
        assert final["status"] == "complete"
        assert final["result"] == {"approved": True, "approvals": sorted(route)}, amount
        skips = [t for t in engine.transitions(task_id) if t["to"] == "skipped"]
        assert sorted(t["step"] for t in skips) == sorted(set(APPROVALS) - set(route))
        assert {t["reason"] for t in skips} == {"not chosen"}


@pytest.mark.parametrize("source", sources())
def test_every_route_of_the_conditional_approval_template(engine, source):
    run_every_route(engine, source)


@pytest.mark.parametrize("source", sources())
def test_every_route_on_postgres(postgres_url, source):
    engine = tasker_core.Engine(postgres_url)
    try:
        run_every_route(engine, source)
    finally:
        engine.close()


def test_a_decision_naming_a_step_that_does_not_depend_on_it_fails_for_good(memory_engine):
    memory_engine.register_template(OWN)
    task_id = memory_engine.create_task(
        "conditional_approval", "approval_routing",
        context={"amount": 10, "requester": "ada", "purpose": "pens"})
    worker = worker_for(memory_engine, lambda s: tasker_core.Decision(["finalize_approval"]))
    counts = worker.run_until_idle(timeout=30)
    assert counts["failed"] == 1, counts
    task = memory_engine.task(task_id)
    decision = step_of(task, "routing_decision")
    assert decision["status"] == "error" and decision["attempts"] == 1
    assert "chose \"finalize_approval\", which does not depend on it" in decision["error"]
    assert task["status"] == "error"


def claim_the_decision(engine: tasker_core.Engine) -> tuple[str, dict]:
    """A new task with its request validated by hand, and its decision step claimed."""
    engine.register_template(OWN)
    task_id = engine.create_task("conditional_approval", "approval_routing",
                                 context={"amount": 10, "requester": "ada", "purpose": "pens"})
    (validate,) = engine.claim("w", None, 1)
    engine.complete(validate["step_id"], validate["attempt"], {"amount": 10})
    (route,) = engine.claim("w", None, 1)
    assert route["name"] == "routing_decision"
    return task_id, route


def test_a_plain_result_from_a_decision_step_fails_for_good(memory_engine):
    task_id, route = claim_the_decision(memory_engine)
    memory_engine.complete(route["step_id"], route["attempt"], ["auto_approve"])
    decision = step_of(memory_engine.task(task_id), "routing_decision")
    assert decision["status"] == "error"
    assert "returned a plain result" in decision["error"]


def test_the_low_level_protocol_takes_a_decision(memory_engine):
    _, route = claim_the_decision(memory_engine)
    memory_engine.complete(route["step_id"], route["attempt"],
                           tasker_core.Decision(["auto_approve"], result={"why": "small"}))
    (auto,) = memory_engine.claim("w", None, 5)
    assert auto["name"] == "auto_approve"
    assert auto["inputs"] == {"routing_decision": {"why": "small"}}
    memory_engine.complete(auto["step_id"], auto["attempt"], "ok")
    (final,) = memory_engine.claim("w", None, 5)
    assert final["name"] == "finalize_approval" and final["inputs"] == {"auto_approve": "ok"}


def test_a_decision_checks_its_arguments():
    with pytest.raises(TypeError, match="list of step names, not str"):
        tasker_core.Decision("auto_approve")
    with pytest.raises(TypeError):
        tasker_core.Decision([1, 2])
    d = tasker_core.Decision(["a", "b"], result={"x": 1})
    assert d.steps == ["a", "b"] and d.result == {"x": 1}
    assert repr(d) == "Decision([\"a\", \"b\"], result={'x': 1})"
    assert tasker_core.Decision([]).result is None
