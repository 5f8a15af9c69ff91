# frozen_string_literal: true

require_relative "test_helper"

# The worker conformance suite, Ruby side: the cases of core/tests/worker_conformance.rs, run
# through the gem on memory and SQLite (../shared/API.md § "Worker semantics").
module WorkerConformance
  def one_step(name, **fields)
    extra = fields.map { |k, v| "\n    #{k}: #{v}" }.join
    @engine.register_template("namespace: conf\nname: #{name}\nversion: 1.0.0\nsteps:\n  - name: s#{extra}\n")
    @engine.create_task("conf", name)
  end

  def events(id)
    @engine.transitions(id).select { |t| t["step"] == "s" }.map { |t| t["event"] }
  end

  def test_timeout_ms_fails_a_handler_that_cannot_be_killed_and_its_late_return_is_refused
    id = one_step("timeout", timeout_ms: 200, retry: "{max_attempts: 2, backoff_base_ms: 1, jitter: false}")
    worker = TaskerCore::Worker.new(@engine, concurrency: 2)
    worker.handler("s") do |step|
      sleep 0.6 if step.attempt == 1
      step.attempt == 1 ? "late" : "on time"
    end
    counts = worker.run_until_idle(timeout: 20)
    s = @engine.task(id)["steps"][0]
    assert_equal ["complete", "on time", 2], [s["status"], s["result"], s["attempts"]]
    assert_equal [1, 1], [counts["completed"], counts["failed"]]
    reasons = @engine.transitions(id).select { |t| t["event"] == "fail" }.map { |t| t["reason"] }
    assert_equal ["timed out after 200 ms"], reasons
  end

  def test_the_lease_is_renewed_while_a_long_handler_runs
    id = one_step("lease", timeout_ms: 10_000, lease_ms: 150)
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("s") { |_step| sleep 0.7; "alive" }
    rival = Thread.new do
      sleep 0.1
      Array.new(12) { @engine.claim("rival", nil, 1).tap { sleep 0.04 } }.flatten
    end
    counts = worker.run_until_idle(timeout: 20)
    assert_equal [], rival.value
    assert_equal 1, counts["completed"]
    assert_equal 1, @engine.task(id)["steps"][0]["attempts"]
    refute_includes events(id), "lease_expired"
  end

  def test_a_dead_workers_step_comes_back_within_a_few_leases
    id = one_step("dead", lease_ms: 200, retry: "{max_attempts: 3, backoff_base_ms: 1, jitter: false}")
    assert_equal 1, @engine.claim("dead-worker", nil, 1).size # then its process died
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("s") { |_step| "recovered" }
    began = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    worker.run_until_idle(timeout: 20)
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - began, :<, 0.8
    s = @engine.task(id)["steps"][0]
    assert_equal %w[complete 2], [s["status"], s["attempts"].to_s]
    assert_includes events(id), "lease_expired"
  end

  def test_stop_releases_what_outlives_the_drain_timeout
    id = one_step("release")
    worker = TaskerCore::Worker.new(@engine, drain_timeout: 0.1)
    started = Queue.new
    done = Queue.new
    worker.handler("s") do |_step|
      started << true
      done.pop
      "never recorded"
    end
    Thread.new { started.pop; worker.stop }
    counts = worker.run
    done << true
    assert_equal [0, 1], [counts["completed"], counts["released"]]
    s = @engine.task(id)["steps"][0]
    assert_equal ["pending", 0], [s["status"], s["attempts"]]
    assert_includes events(id), "release"
    assert_equal 1, @engine.claim("next", nil, 1)[0]["attempt"]
  end

  def test_a_claim_lost_to_a_cancel_is_counted_lost
    id = one_step("lost")
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("s") { |step| @engine.cancel_task(step.task_id) && "too late" }
    counts = worker.run_until_idle(timeout: 20)
    assert_equal [0, 1], [counts["completed"], counts["lost"]]
    assert_equal "cancelled", @engine.task(id)["status"]
  end

  def test_step_heartbeat_renews_the_lease
    one_step("heartbeat", lease_ms: 5000)
    worker = TaskerCore::Worker.new(@engine)
    seen = Queue.new
    worker.handler("s") { |step| seen << step.heartbeat; "ok" }
    assert_equal 1, worker.run_until_idle(timeout: 20)["completed"]
    assert_match(/T/, seen.pop.to_s)
  end
end

TaskerTest.on_each_store(WorkerConformance)

# The store outage of the suite: the PostgreSQL server unreachable for 1.5 s in the middle of a
# run (tests/support/outage_proxy.py cuts every connection and refuses new ones).
class WorkerConformanceOutageTest < Minitest::Test
  def setup
    @url, @schema = TaskerTest.postgres_schema
    skip "TASKER_TEST_POSTGRES_URL is not set" if @url.nil?
    @proxy = TaskerTest::OutageProxy.new(@url, 1.5)
  end

  def teardown
    @proxy&.kill
    TaskerTest.drop_postgres_schema(@schema) if @schema
  end

  def test_a_store_outage_is_waited_out_and_no_outcome_is_lost
    engine = TaskerCore::Engine.new(@proxy.url)
    engine.register_template("namespace: conf\nname: outage\nversion: 1.0.0\nsteps:\n  - name: first\n" \
                             "  - name: second\n    depends_on: [first]\n")
    tasks = Array.new(20) { engine.create_task("conf", "outage") }
    worker = TaskerCore::Worker.new(engine, concurrency: 4)
    cut = Mutex.new
    done = false
    worker.handler("first") { |_step| cut.synchronize { @proxy.cut unless done; done = true }; "first" }
    worker.handler("second") { |_step| "second" }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    counts = worker.run_until_idle(timeout: 60)
    assert done
    assert_equal [40, 0, 0, true], counts.values_at("completed", "lost", "failed", "idle"), counts.inspect
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :>=, 1.5
    assert(tasks.all? { |t| engine.task(t)["status"] == "complete" })
    engine.close
    cut_connections, refused = @proxy.finish
    assert_operator cut_connections + refused, :>, 0
  end
end
