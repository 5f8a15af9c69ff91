# frozen_string_literal: true

require "socket"
require_relative "test_helper"

# Webhooks from Ruby: the engine's allow_private_webhooks: option and the deliveries' view.
class WebhooksTest < Minitest::Test
  def template(port)
    <<~YAML
      namespace: test
      name: hooked
      version: 1.0.0
      webhooks:
        - on: [task.completed]
          url: http://127.0.0.1:#{port}/hook
          timeout_ms: 500
          retry: { max_attempts: 3, backoff_base_ms: 10, backoff_max_ms: 10, jitter: false }
      steps:
        - name: only
    YAML
  end

  # Runs the task, then sends its deliveries until they settle or +tries+ run out.
  def run_and_deliver(engine, id, tries: 200)
    worker = TaskerCore::Worker.new(engine)
    worker.handler("only") { 1 }
    worker.run_until_idle(timeout: 30)
    tries.times do
      engine.deliver_webhooks
      deliveries = engine.webhook_deliveries(id)
      return deliveries if deliveries.all? { |d| %w[delivered failed].include?(d["status"]) }

      sleep 0.02
    end
    engine.webhook_deliveries(id)
  end

  # A port nothing listens on: bound, not listening (connections are refused, and nothing
  # else can take it while the test runs).
  def closed_port
    @bound = Socket.new(:INET, :STREAM)
    @bound.bind(Addrinfo.tcp("127.0.0.1", 0))
    @bound.local_address.ip_port
  end

  def teardown
    @bound&.close
  end

  def test_a_loopback_url_is_refused_by_default
    engine = TaskerCore::Engine.new("memory:")
    engine.register_template(template(closed_port))
    id = engine.create_task("test", "hooked")
    delivery, = run_and_deliver(engine, id)
    assert_equal %w[failed 1], [delivery["status"], delivery["attempts"].to_s]
    assert_match(/\Arefused: 127\.0\.0\.1 is a loopback address/, delivery["last_error"])
    assert_equal "task.completed", delivery["event"]
  end

  def test_allowed_private_deliveries_are_tried_and_retried
    engine = TaskerCore::Engine.new("memory:", allow_private_webhooks: true)
    engine.register_template(template(closed_port))
    id = engine.create_task("test", "hooked")
    delivery, = run_and_deliver(engine, id)
    # Nothing listens: each of the three attempts fails to connect, then it fails for good.
    assert_equal %w[failed 3], [delivery["status"], delivery["attempts"].to_s]
    refute_match(/refused: /, delivery["last_error"])
    assert_raises(TaskerCore::NotFoundError) { engine.webhook_deliveries("01900000-0000-7000-8000-000000000000") }
  end
end
