# frozen_string_literal: true

require_relative "test_helper"

# Engine#metrics: the Prometheus text counts what the engine's workers did, on each store.
module MetricsBehaviour
  # The value of the sample written as +sample+ (its name and labels), or nil.
  def sample(text, sample)
    line = text.lines.find { |l| l.start_with?("#{sample} ") }
    line && Float(line.split(" ").last)
  end

  def test_the_metrics_count_a_run
    @engine.register_template(TaskerTest::DIAMOND)
    2.times { |n| @engine.create_task("test", "diamond", context: { order: n }) }
    diamond_worker(@engine, concurrency: 2).run_until_idle(timeout: 30)
    @engine.create_task("test", "diamond", context: { order: 9 })
    text = @engine.metrics
    assert text.end_with?("# EOF\n"), text
    task = 'namespace="test",name="diamond"'
    assert_equal 3.0, sample(text, %(tasker_tasks_total{#{task},status="pending"})), text
    assert_equal 2.0, sample(text, %(tasker_tasks_total{#{task},status="complete"})), text
    %w[validate charge reserve_stock ship notify].each do |s|
      labels = %(namespace="test",task="diamond",step="#{s}")
      assert_equal 2.0, sample(text, %(tasker_steps_total{#{labels},outcome="completed"})), s
      assert_equal 2.0, sample(text, %(tasker_step_duration_seconds_count{#{labels}})), s
    end
    assert_equal 1.0, sample(text, %(tasker_ready_steps{handler="validate"})), text
    assert_equal 0.0, sample(text, "tasker_leases_expired_total"), text
  end
end

class MemoryMetricsTest < Minitest::Test
  include TaskerTest
  include MetricsBehaviour

  def setup
    @engine = TaskerCore::Engine.new("memory:")
  end
end

class SqliteMetricsTest < Minitest::Test
  include TaskerTest
  include MetricsBehaviour

  def setup
    @dir = Dir.mktmpdir
    @engine = TaskerCore::Engine.new("sqlite://#{@dir}/tasker.db")
  end

  def teardown
    @engine.close
    FileUtils.remove_entry(@dir)
  end
end

# Trace context: create_task(traceparent:) continues the caller's trace; handlers get their
# attempt's traceparent.
class TraceContextTest < Minitest::Test
  include TaskerTest

  def setup
    @engine = TaskerCore::Engine.new("memory:")
    @engine.register_template(template("traced", "only"))
  end

  def test_a_task_continues_the_callers_trace_and_its_steps_are_handed_theirs
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    id = @engine.create_task("test", "traced", traceparent: caller)
    task = @engine.task(id)
    _, trace, span, = task["traceparent"].split("-")
    assert_equal "4bf92f3577b34da6a3ce929d0e0e4736", trace
    refute_equal "00f067aa0ba902b7", span
    seen = Queue.new
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("only") { |step| seen << step.traceparent }
    worker.run_until_idle(timeout: 10)
    handed = seen.pop.split("-")
    assert_equal trace, handed[1]
    refute_equal span, handed[2]
  end

  def test_a_malformed_traceparent_is_refused
    error = assert_raises(TaskerCore::InvalidArgumentError) do
      @engine.create_task("test", "traced", traceparent: "not-a-trace")
    end
    assert_match(/traceparent/, error.message)
    assert_empty @engine.list_tasks
  end
end

# Engine#stats: what the store holds, counted.
class StatsTest < Minitest::Test
  include TaskerTest

  def test_the_stats_count_a_run
    engine = TaskerCore::Engine.new("memory:")
    engine.register_template(TaskerTest::DIAMOND)
    2.times { |n| engine.create_task("test", "diamond", context: { order: n }) }
    diamond_worker(engine, concurrency: 2).run_until_idle(timeout: 30)
    stats = engine.stats
    assert_equal({ "complete" => 2 }, stats["tasks"])
    assert_equal({ "complete" => 10 }, stats["steps"])
    assert_equal 0, stats["retries"]
    handlers = stats["handlers"].map { |h| h["handler"] }
    assert_equal %w[charge notify reserve_stock ship validate], handlers
    assert(stats["handlers"].all? { |h| h["finished"] == 2 })
  end
end

# Engine.new(metrics: false) keeps no counters.
class MetricsOffTest < Minitest::Test
  include TaskerTest

  def test_an_engine_opened_without_metrics_counts_nothing
    engine = TaskerCore::Engine.new("memory:", metrics: false)
    engine.register_template(template("quiet", "only"))
    engine.create_task("test", "quiet")
    text = engine.metrics
    refute_match(/^tasker_tasks_total/, text)
    assert_match(/^tasker_ready_steps\{handler="only"\} 1$/, text)
  end
end
