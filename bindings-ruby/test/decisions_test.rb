# frozen_string_literal: true

require_relative "test_helper"

# Handler classes named by tasker-core's conditional approval template, written the way its
# comments describe: validate the request, route on the amount (below 1,000 auto-approve; below
# 5,000 a manager; above, a manager and finance), approve, and converge.
module ConditionalApproval
  module StepHandlers
    class ValidateRequestHandler
      def call(step)
        raise TaskerCore::PermanentError, "amount must be positive" unless step.context["amount"].to_f.positive?

        { "validated" => true, "amount" => step.context["amount"] }
      end
    end

    # The decision point: its thresholds come from the template's handler initialization.
    class RoutingDecisionHandler
      def initialize(config:)
        thresholds = config["thresholds"] || {}
        @small = thresholds.fetch("small", 1000)
        @large = thresholds.fetch("large", 5000)
      end

      def call(step)
        amount = step.inputs["validate_request"]["amount"]
        route = if amount < @small then %w[auto_approve]
                elsif amount < @large then %w[manager_approval]
                else %w[manager_approval finance_review]
                end
        TaskerCore::Decision.new(steps: route, result: { "route" => route, "amount" => amount })
      end
    end

    class AutoApproveHandler
      def call(step) = { "approved" => true, "by" => "auto", "amount" => step.inputs["routing_decision"]["amount"] }
    end

    class ManagerApprovalHandler
      def call(step) = { "approved" => true, "by" => "manager", "amount" => step.inputs["routing_decision"]["amount"] }
    end

    class FinanceReviewHandler
      def call(step) = { "approved" => true, "by" => "finance", "amount" => step.inputs["routing_decision"]["amount"] }
    end

    # The deferred convergence: its inputs are the approvals that ran, and only those.
    class FinalizeApprovalHandler
      def call(step)
        raise TaskerCore::PermanentError, "an approval is missing" unless step.inputs.values.all? { |a| a["approved"] }

        { "approved" => true, "approvals" => step.inputs.keys.sort }
      end
    end
  end
end

# The conditional approval workflow on a store: every route from Ruby.
module DecisionsBehaviour
  SHARED = File.expand_path("../../../shared/compat/core_conditional_approval_decision_point.yaml", __dir__)

  # The same workflow in tasker-core's format, written for this project's tests.
  OWN = File.read(File.expand_path("../../tests/templates/tasker_core_approval_routing.yaml", __dir__))

  APPROVALS = %w[auto_approve manager_approval finance_review].freeze

  def expected_route(amount)
    return %w[auto_approve] if amount < 1000
    return %w[manager_approval] if amount < 5000

    %w[manager_approval finance_review]
  end

  def run_every_route(text)
    summary = @engine.register_template(text)
    assert_equal "tasker_core", summary["format"]
    worker = TaskerCore::Worker.new(@engine, concurrency: 3)
    assert_equal 6, worker.autoload_handlers(summary).size
    amounts = [250.0, 999.99, 1000.0, 4999.0, 5000.0, 25_000.0]
    tasks = amounts.to_h do |a|
      [@engine.create_task("conditional_approval", "approval_routing",
                           context: { "amount" => a, "requester" => "ada", "purpose" => "laptop" }), a]
    end
    counts = worker.run_until_idle(timeout: 60)
    assert counts["idle"], counts.inspect
    assert_equal 0, counts["failed"], counts.inspect
    tasks.each do |id, amount|
      task = @engine.task(id)
      route = expected_route(amount)
      assert_equal "complete", task["status"], amount
      decision = step_of(task, "routing_decision")
      assert_equal "decision", decision["type"]
      assert_equal route, decision["chosen"], amount
      APPROVALS.each do |name|
        s = step_of(task, name)
        if route.include?(name)
          assert_equal "complete", s["status"], "#{amount} #{name}"
          assert_equal amount, s["result"]["amount"]
        else
          assert_equal "skipped", s["status"], "#{amount} #{name}"
          assert_equal "not chosen", s["skip_reason"], "#{amount} #{name}"
        end
      end
      final = step_of(task, "finalize_approval")
      assert_equal({ "approved" => true, "approvals" => route.sort }, final["result"], amount)
      skips = @engine.transitions(id).select { |t| t["to"] == "skipped" }
      assert_equal (APPROVALS - route).sort, skips.map { |t| t["step"] }.sort
      assert_equal ["not chosen"], skips.map { |t| t["reason"] }.uniq
    end
  end

  def test_every_route_of_a_conditional_approval_template
    run_every_route(OWN)
  end

  def test_every_route_of_the_shared_compat_template
    skip "../shared/compat is not beside the repository" unless File.exist?(SHARED)
    run_every_route(File.read(SHARED))
  end

  def test_a_decision_naming_a_step_that_does_not_depend_on_it_fails_for_good
    @engine.register_template(OWN)
    id = @engine.create_task("conditional_approval", "approval_routing", context: { "amount" => 10, "requester" => "ada", "purpose" => "pens" })
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("ConditionalApproval::StepHandlers::ValidateRequestHandler") { { "amount" => 10 } }
    worker.handler("ConditionalApproval::StepHandlers::RoutingDecisionHandler") do
      TaskerCore::Decision.new(steps: [:finalize_approval])
    end
    counts = worker.run_until_idle(timeout: 30)
    assert_equal 1, counts["failed"], counts.inspect
    decision = step_of(@engine.task(id), "routing_decision")
    assert_equal "error", decision["status"]
    assert_includes decision["error"], 'chose "finalize_approval", which does not depend on it'
  end

  def test_the_low_level_protocol_takes_a_decision
    @engine.register_template(OWN)
    id = @engine.create_task("conditional_approval", "approval_routing", context: { "amount" => 10, "requester" => "ada", "purpose" => "pens" })
    validate, = @engine.claim("w", nil, 1)
    @engine.complete(validate["step_id"], validate["attempt"], { "amount" => 10 })
    route, = @engine.claim("w", nil, 1)
    @engine.complete(route["step_id"], route["attempt"], TaskerCore::Decision.new(steps: ["auto_approve"]))
    auto, = @engine.claim("w", nil, 5)
    assert_equal "auto_approve", auto["name"]
    @engine.complete(auto["step_id"], auto["attempt"], "ok")
    final, = @engine.claim("w", nil, 5)
    assert_equal({ "auto_approve" => "ok" }, final["inputs"])
    assert_equal %w[finance_review manager_approval],
                 @engine.task(id)["steps"].select { |s| s["skip_reason"] == "not chosen" }.map { |s| s["name"] }.sort
  end
end

TaskerTest.on_each_store(DecisionsBehaviour)

# The same routes on PostgreSQL, when the test command started a server.
class DecisionsOnPostgresTest < Minitest::Test
  include TaskerTest
  include DecisionsBehaviour

  def setup
    @url, @schema = TaskerTest.postgres_schema
    skip "TASKER_TEST_POSTGRES_URL is not set" unless @url
    @engine = TaskerCore::Engine.new(@url)
  end

  def teardown
    @engine&.close
    TaskerTest.drop_postgres_schema(@schema) if @schema
  end
end

class DecisionTest < Minitest::Test
  def test_a_decision_checks_its_arguments
    assert_raises(TypeError) { TaskerCore::Decision.new(steps: "auto_approve") }
    assert_raises(TypeError) { TaskerCore::Decision.new(steps: [1]) }
    assert_raises(ArgumentError) { TaskerCore::Decision.new }
    d = TaskerCore::Decision.new(steps: [:a, "b"], result: { "x" => 1 })
    assert_equal %w[a b], d.steps
    assert_equal({ "x" => 1 }, d.result)
    assert d.frozen?
    assert_equal d, TaskerCore::Decision.new(steps: %w[a b], result: { "x" => 1 })
  end
end
