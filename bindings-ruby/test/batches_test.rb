# frozen_string_literal: true

require_relative "test_helper"

# Batch fan-out from Ruby: TaskerCore::Batch from a batchable step, Step#batch in its worker
# step's instances, the step after them getting the slices' results in order.
module BatchesBehaviour
  def batch_template(size, parallelism, on_failure)
    TaskerCore::Template.build("rb_batches", "rows_#{on_failure}", "1.0.0") do
      step :load, type: :batchable,
                  batch: { worker: "process", size: size, parallelism: parallelism, on_failure: on_failure }
      step :process, type: :batch_worker, depends_on: [:load], retry: { max_attempts: 1 }
      step :report, depends_on: [:process]
    end
  end

  def sums(n, size)
    (0...(n + size - 1) / size).map { |k| { "slice" => k, "sum" => (k * size...[(k + 1) * size, n].min).sum } }
  end

  def run_rows(n, by_total: false, fail_slice: nil)
    worker = TaskerCore::Worker.new(@engine, concurrency: 3)
    worker.handler("load") do |step|
      count = step.context["n"]
      by_total ? TaskerCore::Batch.new(total: count) : TaskerCore::Batch.new(items: (0...count).to_a)
    end
    worker.handler("process") do |step|
      raise TaskerCore::PermanentError, "bad slice" if step.batch["index"] == fail_slice

      values = step.batch["items"] || (step.batch["start"]...step.batch["end"]).to_a
      { "slice" => step.batch["index"], "sum" => values.sum }
    end
    worker.handler("report") { |step| step.inputs["process"] }
    worker.run_until_idle(timeout: 60)
  end

  def test_a_batch_of_items_runs_a_slice_per_instance
    @engine.register_template(batch_template(100, 2, "fail_fast"))
    id = @engine.create_task("rb_batches", "rows_fail_fast", context: { "n" => 450 })
    counts = run_rows(450)
    assert_equal 7, counts["completed"], counts.inspect
    task = @engine.task(id)
    assert_equal "complete", task["status"]
    assert_equal sums(450, 100), step_of(task, "report")["result"]
    assert_equal 50, step_of(task, "process[4]")["batch"]["items"].size
    assert_equal "process", step_of(task, "process[4]")["instance_of"]
  end

  def test_a_batch_by_total_under_continue_keeps_going_after_a_failed_slice
    @engine.register_template(batch_template(10, 1, "continue"))
    id = @engine.create_task("rb_batches", "rows_continue", context: { "n" => 35 })
    counts = run_rows(35, by_total: true, fail_slice: 2)
    assert_equal 1, counts["failed"], counts.inspect
    expected = sums(35, 10)
    expected[2] = nil
    task = @engine.task(id)
    assert_equal expected, step_of(task, "report")["result"]
    assert_equal "error", task["status"]
  end
end

TaskerTest.on_each_store(BatchesBehaviour)

class BatchTest < Minitest::Test
  def test_a_batch_checks_its_arguments
    assert_raises(ArgumentError) { TaskerCore::Batch.new }
    assert_raises(ArgumentError) { TaskerCore::Batch.new(items: [1], total: 1) }
    assert_raises(TypeError) { TaskerCore::Batch.new(items: "abc") }
    assert_raises(TypeError) { TaskerCore::Batch.new(total: -1) }
    assert_equal 3, TaskerCore::Batch.new(total: 3).total
  end
end
