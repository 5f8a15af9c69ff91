# frozen_string_literal: true

require_relative "test_helper"
require "time"

# The low-level worker protocol: claim, complete, fail, heartbeat, work_status, leases.
module ProtocolBehaviour
  CLAIM_KEYS = %w[step_id task_id name handler namespace task_name attempt max_attempts
                  context inputs lease_expires_at timeout_ms].freeze

  def test_claim_hands_out_ready_steps_with_their_inputs
    @engine.register_template(TaskerTest::DIAMOND)
    id = @engine.create_task("test", "diamond", context: { order: 7 })

    (validate, *rest) = @engine.claim("w1", nil, 10)
    assert_empty rest
    assert_empty CLAIM_KEYS - validate.keys
    assert_equal id, validate["task_id"]
    assert_equal %w[validate validate test diamond], validate.values_at("name", "handler", "namespace", "task_name")
    assert_equal [1, 3], validate.values_at("attempt", "max_attempts")
    assert_equal({ "order" => 7 }, validate["context"])
    assert_equal({}, validate["inputs"])
    assert_operator validate["timeout_ms"], :>, 0
    Time.iso8601(validate["lease_expires_at"])

    assert_equal [], @engine.claim("w1", nil, 10) # its children wait for it
    task = @engine.task(id)
    assert_equal "in_progress", task["status"]
    assert_equal "in_progress", step_of(task, "validate")["status"]
    assert_equal "w1", step_of(task, "validate")["lease_owner"]

    @engine.complete(validate["step_id"], 1, { valid: true })
    children = @engine.claim("w1", ["charge", "reserve_stock"], 10)
    assert_equal %w[charge reserve_stock], children.map { |c| c["name"] }.sort
    children.each do |c|
      assert_equal({ "validate" => { "valid" => true } }, c["inputs"])
      @engine.complete(c["step_id"], c["attempt"], { from: c["name"] })
    end
    (ship,) = @engine.claim("w1", nil, 10)
    assert_equal({ "charge" => { "from" => "charge" }, "reserve_stock" => { "from" => "reserve_stock" } }, ship["inputs"])
    @engine.complete(ship["step_id"], 1, { tracking: "T-1" })
    (notify,) = @engine.claim("w1", nil, 10)
    @engine.complete(notify["step_id"], 1, nil)

    task = @engine.task(id)
    assert_equal "complete", task["status"]
    refute_nil task["completed_at"]
    assert_equal({ "tracking" => "T-1" }, step_of(task, "ship")["result"])
    assert(task["steps"].all? { |s| !s["duration_ms"].nil? })
  end

  def test_claim_respects_the_limit_and_the_handler_filter
    @engine.register_template(template("wide", "a", "b", "c", { "name" => "d", "handler" => "other" }))
    @engine.create_task("test", "wide")
    assert_equal %w[d], @engine.claim("w", ["other"], 10).map { |c| c["name"] }
    first = @engine.claim("w", %w[a b c], 2)
    assert_equal 2, first.size
    rest = @engine.claim("w", %w[a b c], 2)
    assert_equal 1, rest.size
    assert_equal %w[a b c], (first + rest).map { |c| c["name"] }.sort
  end

  def test_claim_waits_for_work_made_ready_meanwhile
    @engine.register_template(template("later", "a"))
    creator = Thread.new do
      sleep 0.1
      @engine.create_task("test", "later")
    end
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    claimed = @engine.claim("w", nil, 1, 5.0)
    creator.join
    assert_equal 1, claimed.size
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 4.0
  end

  def test_complete_with_symbols_gives_strings_back
    @engine.register_template(template("sym", "a"))
    id = @engine.create_task("test", "sym")
    (a,) = @engine.claim("w", nil, 1)
    @engine.complete(a["step_id"], a["attempt"], { status: :shipped, items: [{ sku: "X" }] })
    assert_equal({ "status" => "shipped", "items" => [{ "sku" => "X" }] }, step_of(@engine.task(id), "a")["result"])
  end

  def test_heartbeat_extends_the_lease
    @engine.register_template(template("beating", { "name" => "a", "timeout_ms" => 60_000 }))
    @engine.create_task("test", "beating")
    (a,) = @engine.claim("w", nil, 1)
    sleep 0.01
    expiry = @engine.heartbeat(a["step_id"], a["attempt"])
    assert_kind_of String, expiry
    assert_operator Time.iso8601(expiry), :>, Time.iso8601(a["lease_expires_at"])
  end

  def test_a_retryable_failure_schedules_another_attempt
    @engine.register_template(template("retrying", "a", { "name" => "b", "depends_on" => ["a"] }))
    id = @engine.create_task("test", "retrying")
    (a,) = @engine.claim("w", nil, 1)
    @engine.fail(a["step_id"], 1, "gateway busy", true, 0.05)
    s = step_of(@engine.task(id), "a")
    assert_equal %w[waiting_for_retry gateway\ busy], s.values_at("status", "error")
    refute_nil s["next_attempt_at"]
    again = @engine.claim("w", nil, 1, 5.0)
    assert_equal [["a", 2]], again.map { |c| c.values_at("name", "attempt") }
    @engine.complete(again[0]["step_id"], 2, { ok: true })
    s = step_of(@engine.task(id), "a")
    assert_equal ["complete", 2], s.values_at("status", "attempts")
  end

  def test_retry_after_accepts_an_integer_and_fail_defaults_to_retryable
    @engine.register_template(template("defaults", "a"))
    id = @engine.create_task("test", "defaults")
    (a,) = @engine.claim("w", nil, 1)
    @engine.fail(a["step_id"], 1, "busy")
    assert_equal "waiting_for_retry", step_of(@engine.task(id), "a")["status"]
    (a,) = @engine.claim("w", nil, 1, 5.0)
    @engine.fail(a["step_id"], 2, "busy", true, 0)
    (a,) = @engine.claim("w", nil, 1, 5.0)
    assert_equal 3, a["attempt"]
  end

  def test_a_permanent_failure_skips_the_dependents_and_fails_the_task
    @engine.register_template(template("failing", "a",
                                       { "name" => "b", "depends_on" => ["a"] },
                                       { "name" => "c", "depends_on" => ["b"] },
                                       { "name" => "cleanup", "depends_on" => [{ "step" => "a", "requires_success" => false }] }))
    id = @engine.create_task("test", "failing")
    (a,) = @engine.claim("w", nil, 1)
    @engine.fail(a["step_id"], 1, "card declined", false)
    task = @engine.task(id)
    assert_equal ["error", "card declined"], step_of(task, "a").values_at("status", "error")
    assert_equal %w[skipped skipped], [step_of(task, "b")["status"], step_of(task, "c")["status"]]
    (cleanup,) = @engine.claim("w", nil, 10)
    assert_equal "cleanup", cleanup["name"]
    assert_equal({ "a" => nil }, cleanup["inputs"])
    @engine.complete(cleanup["step_id"], 1, "cleaned")
    assert_equal "error", @engine.task(id)["status"]
  end

  def test_a_late_report_after_the_lease_expired_is_claim_lost
    @engine.register_template(template("expiring", { "name" => "a", "timeout_ms" => 50 }))
    id = @engine.create_task("test", "expiring")
    (a,) = @engine.claim("w", nil, 1)
    sleep 0.15
    assert_operator @engine.reclaim_expired, :>=, 0
    again = @engine.claim("w2", nil, 1, 2.0)
    assert_equal [2], again.map { |c| c["attempt"] }
    error = assert_raises(TaskerCore::ClaimLostError) { @engine.complete(a["step_id"], 1, "late") }
    assert_kind_of TaskerCore::InvalidTransitionError, error
    assert_raises(TaskerCore::ClaimLostError) { @engine.heartbeat(a["step_id"], 1) }
    @engine.complete(again[0]["step_id"], 2, "on time")
    assert_equal "on time", step_of(@engine.task(id), "a")["result"]
  end

  def test_work_status_counts_ready_running_and_waiting
    @engine.register_template(template("status", "a", "b", { "name" => "c", "handler" => "other" }))
    assert_equal 0, @engine.work_status["ready"]
    @engine.create_task("test", "status")
    status = @engine.work_status
    assert_empty %w[ready running waiting next_due] - status.keys
    assert_equal 3, status["ready"]
    assert_equal 2, @engine.work_status(%w[a b])["ready"]
    (a,) = @engine.claim("w", ["a"], 1)
    assert_equal 1, @engine.work_status(%w[a b])["running"]
    @engine.fail(a["step_id"], 1, "later", true, 60)
    status = @engine.work_status(%w[a b])
    assert_equal [1, 0, 1], status.values_at("ready", "running", "waiting")
    refute_nil status["next_due"]
  end

  def test_bad_claim_arguments
    assert_raises(TypeError) { @engine.claim(1, nil, 1) }
    assert_raises(TypeError) { @engine.claim("w", "a", 1) }
    assert_raises(TaskerCore::InvalidArgumentError, ArgumentError, RangeError) { @engine.claim("w", nil, 1, -1.0) }
  end
end

TaskerTest.on_each_store(ProtocolBehaviour)

# The GVL is released while Rust waits: other Ruby threads run meanwhile.
class GvlTest < Minitest::Test
  include TaskerTest

  def setup
    @engine = TaskerCore::Engine.new("memory:")
  end

  def teardown
    @engine.close
  end

  # Counts the iterations another thread makes per 10 ms while the block runs; returns the
  # iterations made well inside the block's run (a margin of one thread time slice at either
  # end) and how long the block took.
  def iterations_during
    base = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    buckets = Array.new(2000, 0)
    running = true
    counter = Thread.new do
      while running
        slot = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - base) * 100).to_i
        buckets[slot] += 1 if slot < buckets.size
      end
    end
    sleep 0.05 # the counter runs
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    running = false
    counter.join
    first = ((t0 + 0.11 - base) * 100).ceil
    last = ((t1 - 0.11 - base) * 100).floor
    [last >= first ? buckets[first..last].sum : 0, t1 - t0]
  end

  def test_claim_releases_the_gvl_while_it_waits
    claimed = nil
    during, took = iterations_during { claimed = @engine.claim("w", nil, 1, 0.5) }
    assert_equal [], claimed
    assert_operator took, :>=, 0.45
    assert_operator during, :>, 1000, "another Ruby thread made #{during} iterations while claim waited"
  end

  def test_subscription_next_releases_the_gvl_while_it_waits
    sub = @engine.subscribe
    event = :none
    during, took = iterations_during { event = sub.next(timeout: 0.5) }
    assert_nil event
    assert_operator took, :>=, 0.45
    assert_operator during, :>, 1000, "another Ruby thread made #{during} iterations while next waited"
  end

  def test_a_waiting_claim_can_be_interrupted_by_another_thread
    waiter = Thread.new do
      Thread.current.report_on_exception = false
      @engine.claim("w", nil, 1, 30.0)
    end
    sleep 0.1
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    waiter.raise(Interrupt)
    assert_raises(Interrupt) { waiter.join(10) }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 5
  end
end
