# frozen_string_literal: true

require_relative "test_helper"

# Child tasks from Ruby: TaskerCore::Children from a handler, the step waiting for them and
# completing with their leaf results in order, a failed child failing it, cancel cascading.
module ChildrenBehaviour
  def register_family
    @engine.register_template(TaskerCore::Template.build("rb_family", "parent", "1.0.0") do
      step :fan_out, retry: { max_attempts: 1 }
      step :summary, depends_on: [:fan_out]
    end)
    @engine.register_template(TaskerCore::Template.build("rb_family", "child", "1.0.0") do
      step :work, retry: { max_attempts: 1 }
      step :tidy, depends_on: [:work]
    end)
  end

  def children_of(context)
    TaskerCore::Children.new((0...context["n"]).map do |i|
      TaskerCore::ChildTask.new("rb_family", "child", { "i" => i, "fail" => context["fail"] == i })
    end)
  end

  def run_family
    worker = TaskerCore::Worker.new(@engine, concurrency: 3)
    worker.handler("fan_out") { |step| children_of(step.context) }
    worker.handler("summary") { |step| step.inputs["fan_out"] }
    worker.handler("work") do |step|
      raise TaskerCore::PermanentError, "cannot work" if step.context["fail"]

      step.context["i"] * 10
    end
    worker.handler("tidy") { |step| { "i" => step.context["i"], "work" => step.inputs["work"] } }
    worker.run_until_idle(timeout: 60)
  end

  def test_a_parent_step_completes_with_its_childrens_results_in_order
    register_family
    id = @engine.create_task("rb_family", "parent", context: { "n" => 4 })
    run_family
    task = @engine.task(id)
    assert_equal "complete", task["status"]
    expected = (0...4).map { |i| { "tidy" => { "i" => i, "work" => i * 10 } } }
    assert_equal expected, step_of(task, "fan_out")["result"]
    assert_equal expected, step_of(task, "summary")["result"]
    step_of(task, "fan_out")["children"].each_with_index do |child, i|
      view = @engine.task(child)
      assert_equal i, view["context"]["i"]
      assert_equal({ "task_id" => id, "step" => "fan_out" }, view["parent"])
    end
  end

  def test_a_failed_child_fails_its_parent_step
    register_family
    id = @engine.create_task("rb_family", "parent", context: { "n" => 3, "fail" => 0 })
    run_family
    task = @engine.task(id)
    assert_equal "error", task["status"]
    fan_out = step_of(task, "fan_out")
    assert_includes fan_out["error"], "child task 0 (#{fan_out['children'][0]}) failed"
  end

  def test_cancelling_a_parent_cancels_its_children
    register_family
    id = @engine.create_task("rb_family", "parent", context: { "n" => 2 })
    step = @engine.claim("test", ["fan_out"], 1).first
    @engine.complete(step["step_id"], step["attempt"], children_of(step["context"]))
    children = step_of(@engine.task(id), "fan_out")["children"]
    assert_equal "waiting_for_children", step_of(@engine.task(id), "fan_out")["status"]
    @engine.cancel_task(id)
    assert_equal %w[cancelled cancelled], children.map { |c| @engine.task(c)["status"] }
    assert_equal 0, @engine.tend_children
  end
end

TaskerTest.on_each_store(ChildrenBehaviour)

class ChildrenTest < Minitest::Test
  def test_children_must_be_child_tasks
    error = assert_raises(TypeError) { TaskerCore::Children.new([{ "namespace" => "a" }]) }
    assert_includes error.message, "child 0 must be a TaskerCore::ChildTask"
    assert_equal "b/c", TaskerCore::ChildTask.new(:b, :c).then { |t| "#{t.namespace}/#{t.name}" }
  end
end
