# frozen_string_literal: true

require_relative "test_helper"
require "time"

# Time from Ruby: tasks that run later (run_at: / delay:), template deadlines, purge.
module TimeBehaviour
  CHAIN = <<~YAML
    namespace: rb_time
    name: chain
    version: 1.0.0
    steps:
      - name: a
      - name: b
        depends_on: [a]
  YAML

  def test_a_delayed_task_runs_nothing_before_its_start
    @engine.register_template(CHAIN)
    later = @engine.create_task("rb_time", "chain", delay: 3600)
    @engine.create_task("rb_time", "chain", run_at: Time.now + 1800)
    assert_equal [], @engine.claim("w", nil, 10)
    refute_nil step_of(@engine.task(later), "a")["next_attempt_at"]
    assert_equal 2, @engine.work_status["waiting"]
    now = @engine.create_task("rb_time", "chain", run_at: (Time.now - 1).utc.iso8601)
    assert_equal [now], @engine.claim("w", nil, 10).map { |s| s["task_id"] }
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.create_task("rb_time", "chain", run_at: "soon") }
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.create_task("rb_time", "chain", delay: 5, run_at: Time.now) }
  end

  def test_a_deadline_fails_a_task_that_runs_too_long
    @engine.register_template(CHAIN.sub("steps:", "deadline_ms: 200\nsteps:"))
    id = @engine.create_task("rb_time", "chain")
    a = @engine.claim("w", nil, 1).first
    sleep 0.3
    @engine.reclaim_expired
    task = @engine.task(id)
    assert_equal "error", task["status"]
    assert_equal "deadline exceeded", step_of(task, "a")["error"]
    assert_raises(TaskerCore::ClaimLostError) { @engine.complete(a["step_id"], a["attempt"], 1) }
  end

  def test_purge_deletes_finished_tasks
    @engine.register_template(CHAIN)
    done = @engine.create_task("rb_time", "chain")
    kept = @engine.create_task("rb_time", "chain")
    @engine.cancel_task(done)
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.purge(Time.now, ["pending"]) }
    assert_equal 1, @engine.purge(Time.now + 1)
    assert_raises(TaskerCore::NotFoundError) { @engine.task(done) }
    assert_equal "pending", @engine.task(kept)["status"]
  end
end

TaskerTest.on_each_store(TimeBehaviour)
