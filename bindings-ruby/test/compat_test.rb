# frozen_string_literal: true

require_relative "test_helper"
require "tasker_core/compat"

# Handler classes written the Rails Tasker way (Tasker::StepHandler::Base), and classes of
# either contract found by the names templates give them.
module RailsTaskerFixtures
  class ValidateCartHandler < Tasker::StepHandler::Base
    def process(task, _sequence, _step)
      items = task.context["cart_items"]
      { "total" => items.sum { |i| i["price"] * i["quantity"] }, "limit" => config["limit"] }
    end
  end

  class ProcessPaymentHandler < Tasker::StepHandler::Base
    def process(task, sequence, step)
      raise Tasker::RetryableError.new("rate limited", retry_after: 0) if step.attempts == 1

      cart = sequence.steps.find { |s| s.name == "validate_cart" }.results
      raise Tasker::PermanentError.new("declined", error_code: "PAYMENT_DECLINED") if cart["total"] > 100

      { "charged" => cart["total"], "method" => task.context["payment_info"]["method"] }
    end

    def process_results(step, output, _initial)
      step.results = output.merge("workflow_step_id" => step.workflow_step_id)
    end
  end

  # Sets step.results itself: the default process_results keeps it.
  class ShipHandler < Tasker::StepHandler::Base
    def process(_task, sequence, step)
      step.results = { "tracking" => "TRK", "paid" => sequence.find_step_by_name("process_payment").results["charged"] }
      "ignored"
    end
  end

  # This engine's contract, built with its config.
  class NotifyHandler
    def initialize(config:)
      @config = config
    end

    def call(step)
      { "channel" => @config["channel"], "shipped" => step.inputs["ship"]["tracking"] }
    end
  end
end

class CompatTest < Minitest::Test
  include TaskerTest

  TEMPLATE = <<~YAML
    name: checkout
    namespace_name: compat
    version: 1.0.0
    step_templates:
      - name: validate_cart
        handler_class: RailsTaskerFixtures::ValidateCartHandler
        handler_config: {limit: 3}
      - name: process_payment
        handler_class: RailsTaskerFixtures::ProcessPaymentHandler
        depends_on_step: validate_cart
        default_retry_limit: 3
      - name: ship
        handler_class: RailsTaskerFixtures::ShipHandler
        depends_on_step: process_payment
      - name: notify
        handler_class: RailsTaskerFixtures::NotifyHandler
        depends_on_step: ship
        handler_config: {channel: email}
  YAML

  def setup
    @engine = TaskerCore::Engine.new("memory:")
    @summary = @engine.register_template(TEMPLATE)
  end

  def teardown
    @engine.close
  end

  def run_checkout(context)
    worker = TaskerCore::Worker.new(@engine, concurrency: 2)
    names = worker.autoload_handlers(@summary)
    assert_equal %w[RailsTaskerFixtures::ValidateCartHandler RailsTaskerFixtures::ProcessPaymentHandler
                    RailsTaskerFixtures::ShipHandler RailsTaskerFixtures::NotifyHandler], names
    id = @engine.create_task("compat", "checkout", context: context)
    worker.run_until_idle(timeout: 30)
    @engine.task(id)
  end

  def test_rails_tasker_handlers_run_unchanged
    task = run_checkout("cart_items" => [{ "price" => 5, "quantity" => 2 }], "payment_info" => { "method" => "card" })
    assert_equal "complete", task["status"]
    assert_equal({ "total" => 10, "limit" => 3 }, step_of(task, "validate_cart")["result"])
    payment = step_of(task, "process_payment")
    assert_equal 2, payment["attempts"], "the RetryableError was retried"
    assert_equal({ "charged" => 10, "method" => "card", "workflow_step_id" => payment["step_id"] }, payment["result"])
    assert_equal({ "tracking" => "TRK", "paid" => 10 }, step_of(task, "ship")["result"])
    assert_equal({ "channel" => "email", "shipped" => "TRK" }, step_of(task, "notify")["result"])
  end

  def test_a_permanent_error_fails_the_step_for_good_with_its_code
    task = run_checkout("cart_items" => [{ "price" => 500, "quantity" => 1 }], "payment_info" => { "method" => "card" })
    assert_equal "error", task["status"]
    payment = step_of(task, "process_payment")
    assert_equal [2, "error"], [payment["attempts"], payment["status"]]
    assert_includes payment["error"], "PAYMENT_DECLINED"
  end

  def test_names_that_are_no_class_or_registered_already_are_left_alone
    worker = TaskerCore::Worker.new(@engine)
    worker.handler("RailsTaskerFixtures::ShipHandler") { |_| {} }
    got = worker.autoload_handlers("validate", "Nope::Missing", "RailsTaskerFixtures::ShipHandler", "RailsTaskerFixtures")
    assert_equal [], got
    assert_nil TaskerCore::HandlerClass.find("not a constant")
    assert_raises(TypeError) { TaskerCore::HandlerClass.adapter(String, @engine) }
  end

  def test_the_error_classes_are_the_workers_signals
    assert_operator Tasker::RetryableError, :<, TaskerCore::RetryableError
    assert_operator Tasker::PermanentError, :<, TaskerCore::PermanentError
    e = Tasker::RetryableError.new("slow", retry_after: 30, context: { "why" => "busy" })
    assert_equal [30.0, { "why" => "busy" }], [e.retry_after.to_f, e.context]
    assert_equal "PAYMENT_DECLINED", Tasker::PermanentError.new("no", error_code: "PAYMENT_DECLINED").error_code
    assert_raises(NotImplementedError) { Tasker::StepHandler::Base.new.process(nil, nil, nil) }
  end
end
