# frozen_string_literal: true

require_relative "test_helper"

# Views (task, list_tasks, transitions, graph) and operator verbs (cancel, pause, resume,
# retry_task, resolve_step): on each store.
module ViewsBehaviour
  PIPELINE = TaskerTest.template("pipeline", "a", { "name" => "b", "depends_on" => ["a"] },
                                 { "name" => "c", "depends_on" => ["b"] })

  STEP_KEYS = %w[step_id name handler status attempts max_attempts result error depends_on started_at
                 completed_at duration_ms next_attempt_at lease_owner lease_expires_at].freeze
  TASK_KEYS = %w[id namespace name version status context priority idempotency_key progress steps
                 created_at updated_at completed_at].freeze

  def test_task_has_the_fields_of_every_binding
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline", context: { order: 1 }, idempotency_key: "k-1", priority: 3)
    task = @engine.task(id)
    assert_empty TASK_KEYS - task.keys
    assert(task.keys.all?(String))
    assert_equal [id, "test", "pipeline", "1.0.0", "pending", 3, "k-1"],
                 task.values_at("id", "namespace", "name", "version", "status", "priority", "idempotency_key")
    assert_nil task["completed_at"]
    task["steps"].each { |s| assert_empty STEP_KEYS - s.keys }
    assert_equal [[], [{ "step" => "a", "requires_success" => true }]],
                 task["steps"].first(2).map { |s| s["depends_on"] }
    assert_kind_of Hash, task["progress"]
  end

  def test_list_tasks_filters_and_is_newest_first
    @engine.register_template(template("listed", "a"))
    @engine.register_template(template("listed", "a", namespace: "other"))
    ids = %w[test test other].map do |ns|
      id = @engine.create_task(ns, "listed")
      sleep 0.002
      id
    end
    @engine.cancel_task(ids[0])
    everything = @engine.list_tasks
    assert_equal ids.reverse, everything.map { |t| t["id"] }
    assert(everything.all? { |t| t.key?("steps") && t.key?("progress") })
    assert_equal [ids[2]], @engine.list_tasks(namespace: "other").map { |t| t["id"] }
    assert_equal [ids[0]], @engine.list_tasks(status: "cancelled").map { |t| t["id"] }
    assert_equal [ids[1]], @engine.list_tasks(status: "pending", namespace: "test").map { |t| t["id"] }
    assert_equal [ids[2]], @engine.list_tasks(limit: 1).map { |t| t["id"] }
    assert_equal [], @engine.list_tasks(name: "nothing-by-that-name")
    assert_equal 3, @engine.list_tasks(name: "listed").size
  end

  def test_transitions_are_the_audit_trail
    @engine.register_template(template("audited", "a", { "name" => "b", "depends_on" => ["a"] }))
    id = @engine.create_task("test", "audited")
    (claimed,) = @engine.claim("w", nil, 10)
    @engine.complete(claimed["step_id"], claimed["attempt"], { ok: true })
    trail = @engine.transitions(id)
    trail.each { |t| assert_empty %w[step_id step from to event reason attempt at] - t.keys }
    assert_nil trail[0]["step"]
    assert_equal "pending", trail[0]["to"]
    assert_includes trail.select { |t| t["step"].nil? }.map { |t| [t["from"], t["to"]] }, %w[pending in_progress]
    a = trail.select { |t| t["step"] == "a" }
    assert_equal [%w[pending in_progress], %w[in_progress complete]], a.map { |t| [t["from"], t["to"]] }
    assert(a.all? { |t| t["attempt"] == 1 && t["step_id"] == claimed["step_id"] })
  end

  def test_graph_lists_nodes_with_states_and_edges
    @engine.register_template(TaskerTest::DIAMOND)
    id = @engine.create_task("test", "diamond")
    (validate,) = @engine.claim("w", ["validate"], 1)
    @engine.complete(validate["step_id"], 1, {})
    graph = @engine.graph(id)
    assert_equal id, graph["task_id"]
    nodes = graph["nodes"].to_h { |n| [n["name"], n] }
    assert_equal "complete", nodes["validate"]["status"]
    assert_equal %w[pending charge], nodes["charge"].values_at("status", "handler")
    edges = graph["edges"].to_h { |e| [[e["from"], e["to"]], e["requires_success"]] }
    assert_equal({ %w[validate charge] => true, %w[validate reserve_stock] => true, %w[charge ship] => true,
                   %w[reserve_stock ship] => true, %w[ship notify] => false }, edges)
  end

  def test_cancel_task_cancels_the_unfinished_steps
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    (a,) = @engine.claim("w", nil, 1)
    @engine.complete(a["step_id"], 1, {})
    @engine.cancel_task(id)
    task = @engine.task(id)
    assert_equal "cancelled", task["status"]
    refute_nil task["completed_at"]
    assert_equal %w[complete cancelled cancelled], task["steps"].map { |s| s["status"] }
    assert_equal [], @engine.claim("w", nil, 10)
    assert_raises(TaskerCore::InvalidTransitionError) { @engine.cancel_task(id) }
  end

  def test_a_completed_task_refuses_the_operator_verbs
    @engine.register_template(template("done", "a"))
    id = @engine.create_task("test", "done")
    (a,) = @engine.claim("w", nil, 1)
    @engine.complete(a["step_id"], 1, "ok")
    %i[cancel_task pause_task resume_task retry_task].each do |verb|
      assert_raises(TaskerCore::InvalidTransitionError, verb.to_s) { @engine.public_send(verb, id) }
    end
    assert_equal "complete", @engine.task(id)["status"]
  end

  def test_a_paused_task_hands_out_nothing_until_resumed
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    @engine.pause_task(id)
    assert_equal "paused", @engine.task(id)["status"]
    assert_equal [], @engine.claim("w", nil, 10)
    assert_raises(TaskerCore::InvalidTransitionError) { @engine.pause_task(id) }
    worker = TaskerCore::Worker.new(@engine)
    %w[a b c].each { |name| worker.handler(name, &:name) }
    assert_equal({ "completed" => 0, "failed" => 0, "lost" => 0, "released" => 0, "idle" => true }, worker.run_until_idle(timeout: 10))
    @engine.resume_task(id)
    refute_equal "paused", @engine.task(id)["status"]
    assert_equal 3, worker.run_until_idle(timeout: 30)["completed"]
    assert_equal "complete", @engine.task(id)["status"]
  end

  def test_retry_task_runs_a_failed_task_again
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    broken = true
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { "a" }
    worker.handler("b") do
      raise TaskerCore::PermanentError, "dependency down" if broken

      "fixed"
    end
    worker.handler("c") { |step| step.inputs["b"] }
    worker.run_until_idle(timeout: 30)
    task = @engine.task(id)
    assert_equal "error", task["status"]
    assert_equal %w[complete error skipped], task["steps"].map { |s| s["status"] }

    broken = false
    @engine.retry_task(id)
    assert_includes %w[pending in_progress], @engine.task(id)["status"]
    assert_equal 2, worker.run_until_idle(timeout: 30)["completed"]
    task = @engine.task(id)
    assert_equal "complete", task["status"]
    assert_equal "fixed", step_of(task, "c")["result"]
  end

  def test_resolve_step_supplies_a_result_and_the_dependents_run
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    (a,) = @engine.claim("w", nil, 1)
    @engine.fail(a["step_id"], 1, "no way", false)
    assert_equal "error", @engine.task(id)["status"]
    @engine.resolve_step(id, "a", { by: :operator })
    task = @engine.task(id)
    assert_equal ["resolved_manually", { "by" => "operator" }], step_of(task, "a").values_at("status", "result")
    (b,) = @engine.claim("w", nil, 10)
    assert_equal "b", b["name"]
    assert_equal({ "a" => { "by" => "operator" } }, b["inputs"])
  end

  def test_resolve_step_of_a_running_step_makes_its_report_claim_lost
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    (a,) = @engine.claim("w", nil, 1)
    @engine.resolve_step(id, "a", "by hand")
    assert_raises(TaskerCore::ClaimLostError) { @engine.complete(a["step_id"], 1, "by worker") }
    assert_equal "by hand", step_of(@engine.task(id), "a")["result"]
  end

  def test_resolve_step_of_an_unknown_step_is_not_found
    @engine.register_template(PIPELINE)
    id = @engine.create_task("test", "pipeline")
    error = assert_raises(TaskerCore::NotFoundError) { @engine.resolve_step(id, "nope", {}) }
    assert_includes error.message, "nope"
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.resolve_step(id, "a", { bad: Object.new }) }
  end
end

TaskerTest.on_each_store(ViewsBehaviour)
