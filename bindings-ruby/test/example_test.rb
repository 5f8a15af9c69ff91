# frozen_string_literal: true

require_relative "test_helper"
require "open3"

# examples/ruby/order_fulfilment.rb, run as a user runs it.
class ExampleTest < Minitest::Test
  include TaskerTest

  EXAMPLE = File.join(TaskerTest::ROOT, "examples", "ruby", "order_fulfilment.rb")

  def run_example(*args, env: {}, chdir: TaskerTest::ROOT)
    Open3.capture3(env, RbConfig.ruby, "-I", TaskerTest::LIB, EXAMPLE, *args, chdir: chdir)
  end

  def assert_order_fulfilled(out)
    lines = out.lines.map(&:split)
    assert_match(/\Atask \S+ \(shop\/fulfil_order 1\.0\.0\) on .*: complete\z/, out.lines.first.chomp)
    steps = lines.drop(2).to_h { |fields| [fields[0], fields[1..2]] }
    assert_equal({ "validate" => %w[complete 1], "charge" => %w[complete 2], "reserve_stock" => %w[complete 1],
                   "ship" => %w[complete 1], "notify" => %w[complete 1] }, steps)
    assert_includes out, '{"tracking":"TRK-42"}'
  end

  def test_the_example_runs_in_memory
    out, err, status = run_example("memory:")
    assert status.success?, err
    assert_order_fulfilled(out)
    assert_includes out.lines.first, "on memory:"
  end

  def test_the_example_runs_on_the_sqlite_url_of_the_environment
    Dir.mktmpdir do |dir|
      url = "sqlite://#{File.join(dir, 'example.db')}"
      out, err, status = run_example(env: { "TASKER_DATABASE_URL" => url })
      assert status.success?, err
      assert_order_fulfilled(out)
      assert File.exist?(File.join(dir, "example.db"))
    end
  end

  def test_the_example_defaults_to_tasker_db_in_the_working_directory
    Dir.mktmpdir do |dir|
      out, err, status = run_example(env: { "TASKER_DATABASE_URL" => nil }, chdir: dir)
      assert status.success?, err
      assert_order_fulfilled(out)
      assert File.exist?(File.join(dir, "tasker.db"))
    end
  end

  def test_a_bad_url_exits_with_status_1
    _out, err, status = run_example("nosuchdb://x")
    assert_equal 1, status.exitstatus
    assert_includes err, "cannot open the engine"
  end
end
