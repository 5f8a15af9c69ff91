# frozen_string_literal: true

require_relative "test_helper"

# The Worker: handlers as blocks, run_until_idle, run/stop, failures, concurrency.
module WorkerBehaviour
  def counts(completed: 0, failed: 0, lost: 0, idle: true, released: 0)
    { "completed" => completed, "failed" => failed, "lost" => lost, "released" => released, "idle" => idle }
  end

  def test_run_until_idle_runs_a_workflow_to_the_end
    @engine.register_template(TaskerTest::DIAMOND)
    id = @engine.create_task("test", "diamond", context: { order: 42 })
    result = diamond_worker(@engine, concurrency: 4).run_until_idle(timeout: 30)
    assert_equal counts(completed: 5), result
    task = @engine.task(id)
    assert_equal "complete", task["status"]
    assert_equal({ "tracking" => "TRK-42" }, step_of(task, "ship")["result"])
    assert_equal({ "notified" => true, "shipped" => true }, step_of(task, "notify")["result"])
    assert(task["steps"].all? { |s| s["attempts"] == 1 })
  end

  def test_handlers_given_as_blocks_receive_a_read_only_step
    @engine.register_template(template("blocks", "first", { "name" => "second", "depends_on" => ["first"] }))
    id = @engine.create_task("test", "blocks", context: { who: "world" })
    seen = Queue.new
    worker = TaskerCore::Worker.new(@engine, concurrency: 2)
    worker.handler("first") do |step|
      seen << step
      { greeting: "hello #{step.context['who']}" }
    end
    worker.handler(:second) { |step| step.inputs["first"]["greeting"].upcase }
    assert_equal counts(completed: 2), worker.run_until_idle(timeout: 30)
    step = seen.pop
    assert_kind_of TaskerCore::Step, step
    assert_equal [id, "first", "first", 1, 3, "test", "blocks"],
                 [step.task_id, step.name, step.handler, step.attempt, step.max_attempts, step.namespace, step.task_name]
    assert_equal({ "who" => "world" }, step.context)
    assert_equal({}, step.inputs)
    assert_kind_of String, step.step_id
    assert step.frozen?
    refute_respond_to step, :attempt=
    assert_equal "HELLO WORLD", step_of(@engine.task(id), "second")["result"]
  end

  def test_run_until_idle_with_nothing_to_do_returns_idle_at_once
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { nil }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_equal counts, worker.run_until_idle(timeout: 10)
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 2
  end

  def test_run_until_idle_ignores_steps_of_other_handlers
    @engine.register_template(template("mixed", "mine", { "name" => "theirs", "handler" => "someone_else" }))
    id = @engine.create_task("test", "mixed")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("mine") { "done" }
    assert_equal counts(completed: 1), worker.run_until_idle(timeout: 10)
    assert_equal "pending", step_of(@engine.task(id), "theirs")["status"]
  end

  def test_run_until_idle_returns_at_the_timeout_once_running_steps_reported
    @engine.register_template(template("slow", "slow"))
    @engine.create_task("test", "slow")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("slow") do
      sleep 0.5
      "late"
    end
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    assert_equal counts(completed: 1, idle: false), worker.run_until_idle(timeout: 0.1)
    assert_includes 0.4..5, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  end

  def test_many_tasks_run_on_at_most_concurrency_threads
    @engine.register_template(template("many", "work"))
    ids = Array.new(12) { |i| @engine.create_task("test", "many", context: { i: i }) }
    lock = Mutex.new
    running = 0
    peak = 0
    threads = {}
    worker = TaskerCore::Worker.new(@engine, concurrency: 3)
    worker.handler("work") do |step|
      lock.synchronize do
        running += 1
        peak = [peak, running].max
        threads[Thread.current] = true
      end
      sleep 0.02
      lock.synchronize { running -= 1 }
      step.context["i"] * 2
    end
    assert_equal counts(completed: 12), worker.run_until_idle(timeout: 60)
    assert_operator peak, :<=, 3
    assert_operator peak, :>=, 2
    assert_operator threads.size, :<=, 3
    refute threads.key?(Thread.main)
    ids.each_with_index { |id, i| assert_equal i * 2, step_of(@engine.task(id), "work")["result"] }
  end

  def test_a_retryable_error_with_retry_after_is_retried
    @engine.register_template(template("flaky", "charge"))
    id = @engine.create_task("test", "flaky")
    attempts = []
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("charge") do |step|
      attempts << step.attempt
      raise TaskerCore::RetryableError.new("gateway busy", retry_after: 0.01) if step.attempt == 1

      { charged: true }
    end
    assert_equal counts(completed: 1, failed: 1), worker.run_until_idle(timeout: 30)
    assert_equal [1, 2], attempts
    s = step_of(@engine.task(id), "charge")
    assert_equal ["complete", 2, { "charged" => true }], s.values_at("status", "attempts", "result")
    retried = @engine.transitions(id).find { |t| t["step"] == "charge" && t["to"] == "waiting_for_retry" }
    refute_nil retried
  end

  def test_a_retryable_error_on_the_last_attempt_fails_the_step
    @engine.register_template(template("hopeless", "a"))
    id = @engine.create_task("test", "hopeless")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { raise TaskerCore::RetryableError, "still busy" }
    assert_equal counts(failed: 3), worker.run_until_idle(timeout: 30)
    assert_equal ["error", 3, "still busy"], step_of(@engine.task(id), "a").values_at("status", "attempts", "error")
    assert_equal "error", @engine.task(id)["status"]
  end

  def test_a_permanent_error_skips_the_dependents_and_fails_the_task
    @engine.register_template(TaskerTest::DIAMOND)
    id = @engine.create_task("test", "diamond", context: { order: 1 })
    worker = diamond_worker(@engine, { "charge" => ->(_step) { raise TaskerCore::PermanentError, "card declined" } })
    assert_equal counts(completed: 3, failed: 1), worker.run_until_idle(timeout: 30)
    task = @engine.task(id)
    assert_equal "error", task["status"]
    assert_equal ["error", 1, "card declined"], step_of(task, "charge").values_at("status", "attempts", "error")
    assert_equal "skipped", step_of(task, "ship")["status"]
    # notify depends on ship with requires_success: false; it still runs.
    assert_equal "complete", step_of(task, "notify")["status"]
    assert_equal({ "notified" => true, "shipped" => false }, step_of(task, "notify")["result"])
  end

  def test_a_plain_exception_is_retried_and_its_backtrace_logged
    @engine.register_template(template("buggy", "a"))
    id = @engine.create_task("test", "buggy")
    log = StringIO.new
    previous = TaskerCore.logger
    TaskerCore.logger = Logger.new(log, progname: "tasker_core")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") do |step|
      raise KeyError, "no such key: :sku" if step.attempt < 3

      "third time lucky"
    end
    assert_equal counts(completed: 1, failed: 2), worker.run_until_idle(timeout: 30)
    s = step_of(@engine.task(id), "a")
    assert_equal ["complete", 3], s.values_at("status", "attempts")
    errors = @engine.transitions(id).select { |t| t["step"] == "a" && t["to"] == "error" }
    assert(errors.all? { |t| t["reason"].to_s.include?("KeyError: no such key: :sku") }, errors.inspect)
    assert_includes log.string, "KeyError: no such key: :sku"
    assert_includes log.string, "worker_test.rb" # the backtrace
    assert_includes log.string, "tasker_core"
  ensure
    TaskerCore.logger = previous
  end

  def test_the_error_message_of_a_plain_exception_names_its_class
    @engine.register_template(template("named", { "name" => "a", "retry" => { "max_attempts" => 1 } }))
    id = @engine.create_task("test", "named")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { raise ArgumentError, "bad order" }
    assert_equal counts(failed: 1), worker.run_until_idle(timeout: 30)
    assert_equal "ArgumentError: bad order", step_of(@engine.task(id), "a")["error"]
  end

  def test_a_result_that_is_not_json_fails_the_step_permanently
    @engine.register_template(template("unserialisable", "a"))
    id = @engine.create_task("test", "unserialisable")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { { "thing" => Object.new } }
    assert_equal counts(failed: 1), worker.run_until_idle(timeout: 30)
    s = step_of(@engine.task(id), "a")
    assert_equal ["error", 1], s.values_at("status", "attempts")
    assert_match(/\Aresult is not JSON-serialisable: .*Object/, s["error"])
    assert_equal "error", @engine.task(id)["status"]
  end

  def test_a_step_without_a_registered_handler_is_not_claimed
    @engine.register_template(template("unhandled", "a", "b"))
    id = @engine.create_task("test", "unhandled")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { 1 }
    assert_equal counts(completed: 1), worker.run_until_idle(timeout: 10)
    assert_equal "pending", step_of(@engine.task(id), "b")["status"]
  end

  def test_run_works_until_stop_is_called_from_another_thread
    @engine.register_template(template("served", "a"))
    worker = TaskerCore::Worker.new(@engine, concurrency: 2, poll_interval: 0.05)
    worker.handler("a") { |step| step.context["n"] }
    runner = Thread.new { worker.run }
    assert wait_for(5) { worker.running? }
    ids = Array.new(3) { |n| @engine.create_task("test", "served", context: { n: n }) }
    done = wait_for(10) { ids.all? { |id| @engine.task(id)["status"] == "complete" } }
    assert done, "the running worker did not complete the tasks created meanwhile"
    worker.stop
    assert runner.join(10), "run did not return after stop"
    assert_equal counts(completed: 3, idle: false), runner.value
    refute worker.running?
  end

  def test_stop_lets_a_running_handler_finish_and_report
    @engine.register_template(template("finishing", "a"))
    id = @engine.create_task("test", "finishing")
    started = Queue.new
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") do
      started << true
      sleep 0.3
      "finished"
    end
    runner = Thread.new { worker.run }
    started.pop
    worker.stop
    assert runner.join(10)
    assert_equal counts(completed: 1, idle: false), runner.value
    assert_equal "finished", step_of(@engine.task(id), "a")["result"]
  end

  def test_stop_from_a_handler_and_a_stop_before_the_run
    @engine.register_template(template("self_stopping", "a"))
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") do
      worker.stop
      "stopped myself"
    end
    @engine.create_task("test", "self_stopping")
    runner = Thread.new { worker.run }
    assert runner.join(10)
    assert_equal 1, runner.value["completed"]

    worker.stop # before the run: it returns at once, and the request is used up
    assert_equal counts(idle: false), worker.run
    assert_equal counts, worker.run_until_idle(timeout: 5)
  end

  def test_a_worker_runs_one_loop_at_a_time
    worker = TaskerCore::Worker.new(@engine, poll_interval: 0.05)
    worker.handler("a") { nil }
    runner = Thread.new { worker.run }
    assert wait_for(5) { worker.running? }
    error = assert_raises(RuntimeError) { worker.run_until_idle(timeout: 1) }
    assert_includes error.message, "running already"
    worker.stop
    assert runner.join(10)
  end

  def test_a_report_refused_as_claim_lost_is_counted_lost
    @engine.register_template(template("resolved", "a"))
    id = @engine.create_task("test", "resolved")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") do
      @engine.resolve_step(id, "a", "by an operator")
      "by the handler"
    end
    assert_equal counts(lost: 1), worker.run_until_idle(timeout: 30)
    assert_equal ["resolved_manually", "by an operator"], step_of(@engine.task(id), "a").values_at("status", "result")
  end

  def test_a_handler_may_heartbeat_its_step
    @engine.register_template(template("beating", { "name" => "a", "timeout_ms" => 60_000 }))
    id = @engine.create_task("test", "beating")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { |step| step.heartbeat }
    assert_equal counts(completed: 1), worker.run_until_idle(timeout: 30)
    assert_kind_of String, step_of(@engine.task(id), "a")["result"]
  end

  def test_a_closed_engine_ends_the_run_with_store_error
    @engine.register_template(template("closing", "a"))
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { nil }
    @engine.close
    assert_raises(TaskerCore::StoreError) { worker.run_until_idle(timeout: 5) }
    refute worker.running?
  end
end

TaskerTest.on_each_store(WorkerBehaviour)

# Registration and arguments, which need no particular store.
class WorkerArgumentsTest < Minitest::Test
  include TaskerTest

  def setup
    @engine = TaskerCore::Engine.new("memory:")
  end

  def teardown
    @engine.close
  end

  def test_handlers_register_as_blocks_callables_and_names
    worker = TaskerCore::Worker.new(@engine)
    assert_same worker, worker.handler("a") { 1 }
    worker.register("b", ->(_step) { 2 })
    worker.register(:c) { 3 }
    worker.register("d", method(:puts))
    assert_equal %w[a b c d], worker.handlers
  end

  def test_bad_registrations_are_refused
    worker = TaskerCore::Worker.new(@engine)
    assert_raises(ArgumentError) { worker.handler("a") }
    assert_raises(TypeError) { worker.register("x", 42) }
    assert_raises(TypeError) { worker.register(42) { nil } }
    assert_raises(ArgumentError) { worker.register("") { nil } }
    assert_raises(ArgumentError) { worker.register("zero", -> { nil }) }
    assert_raises(ArgumentError) { worker.register("two", ->(_a, _b) { nil }) }
    worker.register("x") { nil }
    error = assert_raises(ArgumentError) { worker.register("x") { nil } }
    assert_includes error.message, "registered already"
  end

  def test_bad_worker_arguments
    assert_raises(TypeError) { TaskerCore::Worker.new("memory:") }
    assert_raises(TypeError) { TaskerCore::Worker.new(@engine, concurrency: "4") }
    assert_raises(ArgumentError) { TaskerCore::Worker.new(@engine, concurrency: 0) }
    assert_raises(TypeError) { TaskerCore::Worker.new(@engine, worker_id: 7) }
    assert_raises(ArgumentError) { TaskerCore::Worker.new(@engine, worker_id: "") }
    assert_raises(ArgumentError) { TaskerCore::Worker.new(@engine, poll_interval: -1) }
    assert_raises(TypeError) { TaskerCore::Worker.new(@engine, executor: Object.new) }
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("a") { nil }
    assert_raises(TypeError) { worker.run_until_idle(timeout: "soon") }
    assert_raises(ArgumentError) { worker.run_until_idle(timeout: -1) }
  end

  def test_a_worker_without_handlers_refuses_to_run
    error = assert_raises(RuntimeError) { TaskerCore::Worker.new(@engine).run_until_idle(timeout: 1) }
    assert_includes error.message, "no handlers"
  end

  def test_worker_attributes
    worker = TaskerCore::Worker.new(@engine, concurrency: 3, worker_id: "w-7", poll_interval: 0.25)
    assert_equal ["w-7", 3, 0.25], [worker.worker_id, worker.concurrency, worker.poll_interval]
    assert_same @engine, worker.engine
    refute worker.running?
    assert_includes worker.inspect, "w-7"
    refute_equal TaskerCore::Worker.new(@engine).worker_id, TaskerCore::Worker.new(@engine).worker_id
  end

  def test_an_executor_wraps_every_handler_call
    executor = Class.new do
      attr_reader :calls

      def initialize
        @calls = 0
      end

      def wrap
        @calls += 1
        yield
      end
    end.new
    @engine.register_template(template("wrapped", "a", "b"))
    @engine.create_task("test", "wrapped")
    worker = TaskerCore::Worker.new(@engine, executor: executor)
    worker.handler("a") { 1 }
    worker.handler("b") { 2 }
    assert_equal 2, worker.run_until_idle(timeout: 10)["completed"]
    assert_equal 2, executor.calls
  end

  def test_the_handler_signals
    retryable = TaskerCore::RetryableError.new("busy", retry_after: 2)
    assert_equal ["busy", 2.0], [retryable.message, retryable.retry_after]
    assert_nil TaskerCore::RetryableError.new("busy").retry_after
    assert_equal 0.01, TaskerCore::RetryableError.new("x", retry_after: 0.01).retry_after
    assert_raises(TypeError) { TaskerCore::RetryableError.new("x", retry_after: "soon") }
    assert_raises(ArgumentError) { TaskerCore::RetryableError.new("x", retry_after: -1) }
    assert_raises(ArgumentError) { TaskerCore::RetryableError.new("x", retry_after: Float::INFINITY) }
    assert_equal "card declined", TaskerCore::PermanentError.new("card declined").message
    raised = assert_raises(TaskerCore::PermanentError) { raise TaskerCore::PermanentError, "no" }
    assert_equal "no", raised.message
  end
end

# INT and TERM stop Worker#run cleanly in a process of its own.
class WorkerSignalTest < Minitest::Test
  include TaskerTest

  CHILD = <<~'RUBY'
    require "json"
    require "tasker_core"
    signal = ARGV[0]
    engine = TaskerCore::Engine.new("memory:")
    engine.register_template("namespace: t\nname: slow\nversion: 1.0.0\nsteps: [{name: a}, {name: b, depends_on: [a]}]\n")
    id = engine.create_task("t", "slow")
    worker = TaskerCore::Worker.new(engine, concurrency: 1, poll_interval: 0.05)
    worker.handler("a") do
      $stdout.puts "started"
      $stdout.flush
      sleep 0.5
      "finished"
    end
    worker.handler("b") { "b" }
    mine = proc { $stdout.puts "previous handler" }
    Signal.trap(signal, mine)
    counts = worker.run
    steps = engine.task(id)["steps"].map { |s| [s["name"], s["status"], s["result"]] }
    restored = Signal.trap(signal, "DEFAULT").equal?(mine)
    $stdout.puts JSON.generate("counts" => counts, "steps" => steps, "restored" => restored)
  RUBY

  def run_child(signal)
    require "open3"
    Open3.popen3(RbConfig.ruby, "-I", LIB, "-e", CHILD, signal) do |stdin, stdout, stderr, thread|
      stdin.close
      line = stdout.gets
      assert_equal "started\n", line, -> { stderr.read }
      Process.kill(signal, thread.pid)
      out = stdout.read
      err = stderr.read
      assert thread.value.success?, "exit #{thread.value.inspect}: #{err}"
      JSON.parse(out.lines.last)
    end
  end

  %w[INT TERM].each do |signal|
    define_method("test_#{signal.downcase}_stops_run_after_the_running_handler_reports") do
      skip "no fork/signals on this platform" unless Process.respond_to?(:fork)

      report = run_child(signal)
      # The running step finished and reported; nothing new was claimed after the signal.
      assert_equal({ "completed" => 1, "failed" => 0, "lost" => 0, "released" => 0, "idle" => false }, report["counts"])
      assert_equal [["a", "complete", "finished"], ["b", "pending", nil]], report["steps"]
      assert report["restored"], "the previous #{signal} handler was not put back"
    end
  end
end
