"""register_template: YAML, JSON and dicts; what is refused and how."""

from __future__ import annotations

import json

import pytest
import tasker_core
from conftest import DIAMOND, ROOT, step, yaml_template


def test_register_yaml_text_returns_a_summary(engine):
    summary = engine.register_template(DIAMOND)
    assert summary == {
        "namespace": "test",
        "name": "diamond",
        "version": "1.0.0",
        "steps": ["validate", "charge", "reserve_stock", "ship", "notify"],
        "handlers": ["validate", "charge", "reserve_stock", "ship", "notify"],
        "format": "native",
        "warnings": [],
    }


def test_register_json_text(engine):
    text = json.dumps(
        {
            "namespace": "test",
            "name": "from_json",
            "version": "0.1.0",
            "steps": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}],
        }
    )
    summary = engine.register_template(text)
    assert (summary["name"], summary["version"], summary["steps"]) == (
        "from_json",
        "0.1.0",
        ["a", "b"],
    )


def test_register_a_dict(engine):
    summary = engine.register_template(
        {
            "namespace": "test",
            "name": "from_dict",
            "version": "2.0.0",
            "description": "a dict",
            "steps": [
                {"name": "a", "handler": "h", "timeout_ms": 1000},
                {"name": "b", "depends_on": [{"step": "a", "requires_success": False}]},
            ],
        }
    )
    assert summary["steps"] == ["a", "b"]
    task_id = engine.create_task("test", "from_dict")
    steps = engine.task(task_id)["steps"]
    assert steps[0]["handler"] == "h" and steps[1]["handler"] == "b"
    assert steps[1]["depends_on"] == [{"step": "a", "requires_success": False}]


def test_a_template_of_another_type_is_a_type_error(memory_engine):
    with pytest.raises(TypeError):
        memory_engine.register_template(42)
    with pytest.raises(TypeError):
        memory_engine.register_template(["not", "a", "template"])


def test_a_cycle_is_refused_naming_its_steps(engine):
    text = yaml_template(
        "cyclic", step("start"), step("a", "start", "c"), step("b", "a"), step("c", "b")
    )
    with pytest.raises(tasker_core.TemplateError) as info:
        engine.register_template(text)
    message = str(info.value)
    assert "cycle" in message
    for name in ("a", "b", "c"):
        assert name in message
    assert "start" not in message


def test_an_unknown_dependency_is_refused_naming_both_steps(engine):
    with pytest.raises(tasker_core.TemplateError) as info:
        engine.register_template(yaml_template("unknown", step("ship", "chrage")))
    assert "ship" in str(info.value) and "chrage" in str(info.value)


def test_a_duplicate_step_name_is_refused(engine):
    with pytest.raises(tasker_core.TemplateError, match="more than one"):
        engine.register_template(yaml_template("dup", "a", "a"))


def test_an_empty_step_list_is_refused(engine):
    with pytest.raises(tasker_core.TemplateError):
        engine.register_template(
            "namespace: test\nname: empty\nversion: 1.0.0\nsteps: []\n"
        )


def test_malformed_yaml_is_a_template_error(engine):
    with pytest.raises(tasker_core.TemplateError):
        engine.register_template(
            "namespace: test\nname: [unclosed\nsteps:\n  - {name: a"
        )


def test_a_zero_attempt_budget_is_refused(engine):
    text = yaml_template("zero", step("a", retry={"max_attempts": 0}))
    with pytest.raises(tasker_core.TemplateError, match="max_attempts"):
        engine.register_template(text)


def test_a_version_registered_with_other_content_is_a_conflict(engine):
    engine.register_template(yaml_template("versioned", "a"))
    # The same content again is fine.
    engine.register_template(yaml_template("versioned", "a"))
    with pytest.raises(tasker_core.TemplateError, match="already registered"):
        engine.register_template(yaml_template("versioned", "a", "b"))


def test_create_task_takes_the_newest_version_unless_told(engine):
    engine.register_template(yaml_template("versions", "a", version="1.0.0"))
    engine.register_template(yaml_template("versions", "a", "b", version="1.10.0"))
    engine.register_template(yaml_template("versions", "a", "b", "c", version="1.2.0"))
    newest = engine.task(engine.create_task("test", "versions"))
    assert newest["version"] == "1.10.0" and len(newest["steps"]) == 2
    old = engine.task(engine.create_task("test", "versions", version="1.0.0"))
    assert old["version"] == "1.0.0" and len(old["steps"]) == 1


def test_an_unknown_template_is_not_found(engine):
    with pytest.raises(tasker_core.NotFoundError, match="nope"):
        engine.create_task("test", "nope")
    engine.register_template(yaml_template("known", "a"))
    with pytest.raises(tasker_core.NotFoundError):
        engine.create_task("test", "known", version="9.9.9")


def test_a_malformed_version_is_an_invalid_argument(engine):
    engine.register_template(yaml_template("semver", "a"))
    with pytest.raises(tasker_core.InvalidArgumentError, match="banana"):
        engine.create_task("test", "semver", version="banana")


RAILS = (ROOT / "tests" / "templates" / "rails_refund.yml").read_text()


def test_a_rails_tasker_template_registers_runs_and_hands_its_config_to_handlers(memory_engine):
    summary = memory_engine.register_template(RAILS)
    assert (summary["format"], summary["namespace"], summary["steps"]) == (
        "rails",
        "payments",
        ["look_up", "refund"],
    )
    assert any("task_handler_class" in w for w in summary["warnings"])
    assert summary["handlers"] == ["Payments::LookUp", "Payments::Refund"]
    seen = {}
    worker = tasker_core.Worker(memory_engine)

    @worker.handler("Payments::LookUp")
    def look_up(step):
        seen["config"] = dict(step.config)
        return {"found": True}

    worker.register("Payments::Refund", lambda step: {"config": dict(step.config)})
    task = memory_engine.create_task("payments", "refund", context={"amount": 5})
    worker.run_until_idle(timeout=30)
    assert memory_engine.task(task)["status"] == "complete"
    assert seen["config"] == {"gateway": "stripe"}
    assert memory_engine.task(task)["steps"][1]["result"] == {"config": {}}


def test_the_environment_picks_the_overrides_and_a_bad_context_names_its_path():
    engine = tasker_core.Engine("memory:", environment="test")
    assert engine.environment == "test"
    engine.register_template(RAILS)
    with pytest.raises(tasker_core.InvalidContextError) as caught:
        engine.create_task("payments", "refund", context={"amount": "five"})
    assert "/amount" in str(caught.value)
    assert isinstance(caught.value, tasker_core.InvalidArgumentError)
    engine.create_task("payments", "refund", context={"amount": 5})
    step = engine.claim("w", None, 1)[0]
    assert step["config"] == {"gateway": "sandbox"}


CORE = """
name: sync
namespace_name: crm
version: 1.0.0
steps:
  - name: pull
    handler: {callable: compat_handlers.Pull, initialization: {page: 7}}
  - name: push
    handler: {callable: compat_handlers.Push}
    dependencies: [pull]
  - name: audit
    handler: {callable: compat_handlers.audit, initialization: {level: 2}}
    dependencies: [push]
"""


def test_a_worker_with_autoload_imports_the_handlers_templates_name(memory_engine):
    summary = memory_engine.register_template(CORE)
    assert summary["format"] == "tasker_core"
    assert memory_engine.registered_handlers() == [
        "compat_handlers.Pull", "compat_handlers.Push", "compat_handlers.audit",
    ]
    worker = tasker_core.Worker(memory_engine, autoload=True)
    task = memory_engine.create_task("crm", "sync")
    worker.run_until_idle(timeout=30)
    view = memory_engine.task(task)
    assert view["status"] == "complete"
    results = {s["name"]: s["result"] for s in view["steps"]}
    assert results == {
        "pull": {"page": 7, "attempt": 1},
        "push": {"pushed": 7},
        "audit": {"audited": True, "config": {"level": 2}},
    }


def test_autoload_handlers_leaves_names_that_import_nothing(memory_engine):
    worker = tasker_core.Worker(memory_engine)
    worker.register("compat_handlers.audit", lambda step: {})
    got = worker.autoload_handlers(
        "validate", "compat_handlers.missing", "no_such_module.X", "compat_handlers.NOT_CALLABLE",
        "compat_handlers.audit", {"handlers": ["compat_handlers.Push"]},
    )
    assert got == ["compat_handlers.Push"]


def test_a_template_built_in_code_registers_and_is_checked_as_any_other(memory_engine):
    built = (
        tasker_core.Template("built", "chain", "1.0.0", description="in code", events=["x.y"])
        .step("a", config={"k": 1}, events=[{"name": "a.done", "description": "d"}])
        .step("b", depends_on=["a"], retry={"max_attempts": 2}, handler="bee")
        .step("c", depends_on=[{"step": "b", "requires_success": False}])
    )
    assert isinstance(built, dict)
    summary = memory_engine.register_template(built)
    assert (summary["steps"], summary["handlers"]) == (["a", "b", "c"], ["a", "bee", "c"])
    with pytest.raises(tasker_core.TemplateError, match="engine's own"):
        memory_engine.register_template(
            tasker_core.Template("built", "bad", "1.0.0").step("a", events=["task.done"])
        )
    looped = tasker_core.Template("built", "loop", "1.0.0").step("a", depends_on=["b"]).step(
        "b", depends_on=["a"]
    )
    with pytest.raises(tasker_core.TemplateError, match="cycle: a -> b -> a"):
        memory_engine.register_template(looped)
