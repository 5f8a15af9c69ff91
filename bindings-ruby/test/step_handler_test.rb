# frozen_string_literal: true

require_relative "test_helper"

# Handler classes of this file (the registry is global: the tests look only at these).
module HandlerFixtures
  class ValidateHandler < TaskerCore::StepHandler
    def call(step)
      { "order" => step.context["order"], "valid" => true }
    end
  end

  class ChargeHandler < TaskerCore::StepHandler
    def call(step)
      raise TaskerCore::RetryableError.new("gateway busy", retry_after: 0.01) if step.attempt == 1

      { "charged" => true, "order" => step.inputs["validate"]["order"] }
    end
  end

  class ReserveStockHandler < TaskerCore::StepHandler
    def call(_step)
      { "reserved" => 1 }
    end
  end

  # An abstract base class: no call of its own, so not a handler.
  class ApplicationHandler < TaskerCore::StepHandler
    def order(step)
      step.context["order"]
    end
  end

  class Shipping < ApplicationHandler
    handler_name "ship"

    def call(step)
      raise TaskerCore::PermanentError, "unpaid" unless step.inputs["charge"]["charged"]

      { "tracking" => "TRK-#{order(step)}" }
    end
  end

  class NotifyHandler < ApplicationHandler
    def call(step)
      @calls = (@calls || 0) + 1 # a fresh instance per step: always 1
      { "notified" => true, "shipped" => !step.inputs["ship"].nil?, "calls" => @calls }
    end
  end

  class HTTPFetchHandler < TaskerCore::StepHandler
    def call(_step) = nil
  end

  class Unimplemented < TaskerCore::StepHandler
  end

  ALL = [ValidateHandler, ChargeHandler, ReserveStockHandler, Shipping, NotifyHandler].freeze
end

class StepHandlerTest < Minitest::Test
  include TaskerTest

  def setup
    @engine = TaskerCore::Engine.new("memory:")
  end

  def teardown
    @engine.close
  end

  def test_the_default_name_is_the_class_name_underscored_without_handler
    assert_equal "validate", HandlerFixtures::ValidateHandler.handler_name
    assert_equal "charge", HandlerFixtures::ChargeHandler.handler_name
    assert_equal "reserve_stock", HandlerFixtures::ReserveStockHandler.handler_name
    assert_equal "notify", HandlerFixtures::NotifyHandler.handler_name
    assert_equal "http_fetch", HandlerFixtures::HTTPFetchHandler.handler_name
    assert_equal "unimplemented", HandlerFixtures::Unimplemented.handler_name
  end

  def test_handler_name_sets_another_name
    assert_equal "ship", HandlerFixtures::Shipping.handler_name
    klass = Class.new(TaskerCore::StepHandler) do
      handler_name :anonymous_one
      def call(_step) = 1
    end
    assert_equal "anonymous_one", klass.handler_name
    assert_raises(ArgumentError) { Class.new(TaskerCore::StepHandler).handler_name }
    assert_raises(ArgumentError) { Class.new(TaskerCore::StepHandler) { handler_name "" } }
    assert_raises(TypeError) { Class.new(TaskerCore::StepHandler) { handler_name 42 } }
  end

  def test_the_registry_lists_the_subclasses_that_implement_call
    registry = TaskerCore::StepHandler.registry
    HandlerFixtures::ALL.each { |klass| assert_includes registry, klass }
    assert_includes registry, HandlerFixtures::HTTPFetchHandler
    refute_includes registry, HandlerFixtures::ApplicationHandler
    refute_includes registry, HandlerFixtures::Unimplemented
    refute_includes registry, TaskerCore::StepHandler
    assert_operator registry.index(HandlerFixtures::ValidateHandler), :<, registry.index(HandlerFixtures::ChargeHandler)
  end

  def test_a_class_defined_again_under_the_same_name_replaces_the_old_one
    code = <<~RUBY
      module HandlerFixtures
        class ReloadedHandler < TaskerCore::StepHandler
          def call(_step) = 1
        end
      end
    RUBY
    eval(code, TOPLEVEL_BINDING) # rubocop:disable Security/Eval
    old = HandlerFixtures::ReloadedHandler
    HandlerFixtures.send(:remove_const, :ReloadedHandler) # what Rails' reloader does
    eval(code, TOPLEVEL_BINDING) # rubocop:disable Security/Eval
    fresh = HandlerFixtures::ReloadedHandler
    registry = TaskerCore::StepHandler.registry
    assert_includes registry, fresh
    refute_includes registry, old
  end

  def test_the_base_class_call_is_not_implemented
    step = TaskerCore::Step.new(task_id: "t", step_id: "s", name: "x")
    assert_raises(NotImplementedError) { HandlerFixtures::Unimplemented.new.call(step) }
  end

  def test_handler_classes_run_a_workflow_registered_by_name
    @engine.register_template(TaskerTest::DIAMOND)
    id = @engine.create_task("test", "diamond", context: { order: 9 })
    worker = TaskerCore::Worker.new(@engine, concurrency: 2)
    worker.register_handlers(HandlerFixtures::ALL)
    assert_equal %w[validate charge reserve_stock ship notify], worker.handlers
    assert_equal({ "completed" => 5, "failed" => 1, "lost" => 0, "released" => 0, "idle" => true }, worker.run_until_idle(timeout: 30))
    task = @engine.task(id)
    assert_equal "complete", task["status"]
    assert_equal 2, step_of(task, "charge")["attempts"]
    assert_equal({ "tracking" => "TRK-9" }, step_of(task, "ship")["result"])
    assert_equal 1, step_of(task, "notify")["result"]["calls"]
  end

  def test_register_takes_a_class_alone_or_under_another_name
    @engine.register_template(template("classes", "validate", "other_name"))
    id = @engine.create_task("test", "classes", context: { order: 3 })
    worker = TaskerCore::Worker.new(@engine)
    worker.register(HandlerFixtures::ValidateHandler)
    worker.register("other_name", HandlerFixtures::ReserveStockHandler)
    assert_equal %w[validate other_name], worker.handlers
    assert_raises(ArgumentError) { worker.register(HandlerFixtures::ValidateHandler) }
    assert_equal 2, worker.run_until_idle(timeout: 30)["completed"]
    assert_equal({ "reserved" => 1 }, step_of(@engine.task(id), "other_name")["result"])
  end

  def test_the_registry_as_a_whole_registers
    worker = TaskerCore::Worker.new(@engine)
    worker.register_handlers(TaskerCore::StepHandler.registry)
    assert_includes worker.handlers, "charge"
    assert_includes worker.handlers, "ship"
    refute_includes worker.handlers, "application"
  end

  def test_a_step_is_read_only
    step = TaskerCore::Step.from_claim(
      { "task_id" => "t", "step_id" => "s", "name" => "n", "handler" => "h", "attempt" => 2, "max_attempts" => 2,
        "context" => { "a" => 1 }, "inputs" => {}, "namespace" => "ns", "task_name" => "tn",
        "lease_expires_at" => nil, "timeout_ms" => 1000 }
    )
    assert step.frozen?
    assert_raises(FrozenError) { step.instance_variable_set(:@attempt, 3) }
    %i[task_id step_id name handler context inputs attempt max_attempts namespace task_name].each do |field|
      assert_respond_to step, field
      refute_respond_to step, :"#{field}="
    end
    assert step.last_attempt?
    assert_equal 1000, step.timeout_ms
    assert_includes step.inspect, "attempt 2/2"
    assert_equal "h", step.to_h[:handler]
    assert_raises(ArgumentError) { step.heartbeat } # not claimed through an engine
  end
end
