# frozen_string_literal: true

require_relative "test_helper"

# step.log and Engine#logs: each attempt's lines are kept with its outcome, on each store.
module LogsBehaviour
  TEMPLATE = <<~YAML
    namespace: test
    name: logged
    version: 1.0.0
    steps:
      - name: charge
        retry: { max_attempts: 2, backoff_base_ms: 0, backoff_max_ms: 0, jitter: false }
      - name: notify
        depends_on: [charge]
  YAML

  def lines(id, step = nil)
    @engine.logs(id, step).map { |l| l.values_at("step", "attempt", "level", "message") }
  end

  def test_each_attempt_keeps_its_lines
    @engine.register_template(TEMPLATE)
    id = @engine.create_task("test", "logged")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("charge") do |step|
      step.log("charging")
      if step.attempt == 1
        step.log("declined", :error)
        raise TaskerCore::RetryableError, "declined"
      end
      assert step.log("charged", "warn")
      { charged: true }
    end
    worker.handler("notify") do |step|
      assert_raises(TaskerCore::InvalidArgumentError) { step.log("x", :loud) }
      step.log("sent", :fatal)
      nil
    end
    worker.run_until_idle(timeout: 30)
    assert_equal [["charge", 1, "info", "charging"], ["charge", 1, "error", "declined"],
                  ["charge", 2, "info", "charging"], ["charge", 2, "warn", "charged"]],
                 lines(id, "charge")
    assert_equal [["notify", 1, "error", "sent"]], lines(id, "notify")
    assert_equal 5, @engine.logs(id).size
    assert_equal %w[at attempt level message step step_index], @engine.logs(id).first.keys.sort
  end

  def test_long_logs_are_bounded_and_unknown_ids_refused
    @engine.register_template(TEMPLATE)
    id = @engine.create_task("test", "logged")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("charge") do |step|
      130.times { |i| step.log("line #{i}") }
      { charged: true }
    end
    worker.handler("notify") { |step| step.log("é" * 2000) && nil }
    worker.run_until_idle(timeout: 30)
    charge = @engine.logs(id, "charge")
    assert_equal 100, charge.size
    assert_equal "31 earlier lines dropped", charge.first["message"]
    assert_equal "line 129", charge.last["message"]
    long = @engine.logs(id, "notify").first["message"]
    assert long.bytesize <= 1024 && long.end_with?("…"), long.bytesize.to_s
    assert_raises(TaskerCore::NotFoundError) { @engine.logs(id, "nope") }
    assert_raises(TaskerCore::NotFoundError) { @engine.logs("01900000-0000-7000-8000-000000000000") }
  end
end

class MemoryLogsTest < Minitest::Test
  include TaskerTest
  include LogsBehaviour

  def setup
    @engine = TaskerCore::Engine.new("memory:")
  end
end

class SqliteLogsTest < Minitest::Test
  include TaskerTest
  include LogsBehaviour

  def setup
    @dir = Dir.mktmpdir
    @engine = TaskerCore::Engine.new("sqlite://#{@dir}/tasker.db")
  end

  def teardown
    @engine.close
    FileUtils.remove_entry(@dir)
  end
end
