# frozen_string_literal: true

require_relative "test_helper"

# Concurrency keys and rate limits from Ruby: the core enforces them; a context that cannot
# render a key is refused.
class GatesTest < Minitest::Test
  include TaskerTest

  KEYED = <<~YAML
    namespace: rb_gates
    name: charge
    version: 1.0.0
    steps:
      - name: charge
        concurrency: { key: "customer:{{context.customer}}", limit: 1 }
  YAML

  RATED = <<~YAML
    namespace: rb_gates
    name: call
    version: 1.0.0
    steps:
      - name: call
        rate_limit: { key: rb_api, limit: 10, per_ms: 1000, burst: 2 }
  YAML

  def setup
    @engine = TaskerCore::Engine.new("memory:")
    @engine.register_template(KEYED)
    @engine.register_template(RATED)
  end

  def test_a_key_at_its_limit_holds_back_its_steps_until_one_is_done
    [1, 1, 2].each { |c| @engine.create_task("rb_gates", "charge", context: { customer: c }) }
    first = @engine.claim("rb", nil, 10)
    assert_equal [1, 2], first.map { |s| s["context"]["customer"] }.sort
    assert_empty @engine.claim("rb", nil, 10)
    done = first.find { |s| s["context"]["customer"] == 1 }
    @engine.complete(done["step_id"], done["attempt"], true)
    again = @engine.claim("rb", nil, 10)
    assert_equal [1], again.map { |s| s["context"]["customer"] }
  end

  def test_a_rate_key_gives_out_its_burst_then_waits
    5.times { @engine.create_task("rb_gates", "call") }
    assert_equal 2, @engine.claim("rb", nil, 10).size
  end

  def test_a_context_without_the_key_is_refused
    error = assert_raises(TaskerCore::InvalidContextError) do
      @engine.create_task("rb_gates", "charge", context: {})
    end
    assert_match(/customer/, error.message)
    assert_empty @engine.list_tasks
  end
end
