# frozen_string_literal: true

require_relative "test_helper"

# Opening an engine, templates, create_task, bad input, close: on each store.
module EngineBehaviour
  def test_register_yaml_text_returns_a_summary
    summary = @engine.register_template(TaskerTest::DIAMOND)
    assert_equal({ "namespace" => "test", "name" => "diamond", "version" => "1.0.0",
                   "steps" => %w[validate charge reserve_stock ship notify],
                   "handlers" => %w[validate charge reserve_stock ship notify],
                   "format" => "native", "warnings" => [] }, summary)
  end

  def test_register_a_hash_with_symbol_keys_and_values
    summary = @engine.register_template(
      namespace: "test", name: :symbols, version: "2.0.0",
      steps: [{ name: :a, retry: { max_attempts: 2, backoff_base_ms: 0, jitter: false } },
              { name: "b", depends_on: [:a], handler: :bee }]
    )
    assert_equal({ "namespace" => "test", "name" => "symbols", "version" => "2.0.0", "steps" => %w[a b],
                   "handlers" => %w[a bee], "format" => "native", "warnings" => [] }, summary)
    id = @engine.create_task("test", "symbols")
    assert_equal %w[a b], @engine.task(id)["steps"].map { |s| s["name"] }
    assert_equal "bee", step_of(@engine.task(id), "b")["handler"]
    assert_equal 2, step_of(@engine.task(id), "a")["max_attempts"]
  end

  def test_register_json_text
    summary = @engine.register_template(JSON.generate(template("json", "only")))
    assert_equal %w[only], summary["steps"]
  end

  def test_a_template_of_another_type_is_a_type_error
    assert_raises(TypeError) { @engine.register_template(42) }
    assert_raises(TypeError) { @engine.register_template(%w[not a template]) }
  end

  def test_a_cycle_is_refused_naming_its_steps
    yaml = yaml_template("cyclic", "start",
                         { "name" => "a", "depends_on" => %w[start c] },
                         { "name" => "b", "depends_on" => ["a"] },
                         { "name" => "c", "depends_on" => ["b"] })
    error = assert_raises(TaskerCore::TemplateError) { @engine.register_template(yaml) }
    assert_kind_of TaskerCore::Error, error
    assert_includes error.message, "cycle"
    %w[a b c].each { |name| assert_match(/\b#{name}\b/, error.message) }
    refute_includes error.message, "start"
  end

  def test_other_invalid_templates_are_template_errors
    unknown = assert_raises(TaskerCore::TemplateError) do
      @engine.register_template(template("unknown", { "name" => "a", "depends_on" => ["ghost"] }))
    end
    assert_includes unknown.message, "ghost"
    assert_includes unknown.message, "a"
    assert_raises(TaskerCore::TemplateError) { @engine.register_template(template("dup", "a", "a")) }
    assert_raises(TaskerCore::TemplateError) { @engine.register_template(template("empty")) }
    assert_raises(TaskerCore::TemplateError) { @engine.register_template("steps: [unclosed") }
    zero = assert_raises(TaskerCore::TemplateError) do
      @engine.register_template(template("zero", { "name" => "a", "retry" => { "max_attempts" => 0 } }))
    end
    assert_includes zero.message, "max_attempts"
  end

  def test_create_task_returns_a_string_id_and_gives_string_keys_back
    @engine.register_template(template("ctx", "a"))
    id = @engine.create_task("test", "ctx", context: { order: 42, customer: { name: "Ada", tags: [:vip] } })
    assert_kind_of String, id
    task = @engine.task(id)
    assert_equal id, task["id"]
    assert_equal({ "order" => 42, "customer" => { "name" => "Ada", "tags" => ["vip"] } }, task["context"])
    assert_equal %w[test ctx 1.0.0 pending], task.values_at("namespace", "name", "version", "status")
    (claimed,) = @engine.claim("w", nil, 1)
    assert_equal({ "order" => 42, "customer" => { "name" => "Ada", "tags" => ["vip"] } }, claimed["context"])
  end

  def test_create_task_without_a_context
    @engine.register_template(template("bare", "a"))
    task = @engine.task(@engine.create_task("test", "bare"))
    assert_includes [nil, {}], task["context"]
  end

  def test_create_task_takes_the_newest_version_unless_told
    @engine.register_template(template("versioned", "a", version: "1.0.0"))
    @engine.register_template(template("versioned", "a", "b", version: "1.10.0"))
    @engine.register_template(template("versioned", "a", version: "1.9.0"))
    assert_equal "1.10.0", @engine.task(@engine.create_task("test", "versioned"))["version"]
    old = @engine.task(@engine.create_task("test", "versioned", version: "1.0.0"))
    assert_equal "1.0.0", old["version"]
    assert_equal %w[a], old["steps"].map { |s| s["name"] }
  end

  def test_the_same_idempotency_key_returns_the_same_task
    @engine.register_template(template("idem", "a"))
    first = @engine.create_task("test", "idem", context: { n: 1 }, idempotency_key: "order-42")
    again = @engine.create_task("test", "idem", context: { n: 1 }, idempotency_key: "order-42")
    other = @engine.create_task("test", "idem", idempotency_key: "order-43")
    assert_equal first, again
    refute_equal first, other
    assert_equal "order-42", @engine.task(first)["idempotency_key"]
    error = assert_raises(TaskerCore::IdempotencyConflictError) do
      @engine.create_task("test", "idem", context: { n: 2 }, idempotency_key: "order-42")
    end
    assert_kind_of TaskerCore::InvalidArgumentError, error
    assert_includes error.message, first
    assert_equal 2, @engine.list_tasks.size
  end

  def test_create_tasks_makes_a_batch_in_order
    @engine.register_template(template("batch", "a"))
    ids = @engine.create_tasks(Array.new(30) { |i| { namespace: "test", name: "batch", context: { i: i } } } +
                               [{ "namespace" => "test", "name" => "batch", "idempotency_key" => "k" }] * 2)
    assert_equal 32, ids.size
    assert_equal 31, ids.uniq.size
    assert_equal ids[30], ids[31]
    assert_equal({ "i" => 2 }, @engine.task(ids[2])["context"])
    before = @engine.list_tasks(limit: 1000).size
    assert_raises(TaskerCore::NotFoundError) do
      @engine.create_tasks([{ namespace: "test", name: "batch" }, { namespace: "test", name: "nope" }])
    end
    assert_raises(ArgumentError) { @engine.create_tasks([{ namespace: "test", name: "batch", contxt: {} }]) }
    assert_raises(ArgumentError) { @engine.create_tasks([{ namespace: "test" }]) }
    assert_raises(TypeError) { @engine.create_tasks(["not a hash"]) }
    assert_equal before, @engine.list_tasks(limit: 1000).size
  end

  def test_the_limits_are_the_cores
    @engine.register_template(template("limits", "a"))
    fits = 1
    63.times { fits = [fits] } # the context Hash is the 64th level
    @engine.create_task("test", "limits", context: { v: fits })
    assert_raises(TaskerCore::InvalidArgumentError, /deeper than 64/) do
      @engine.create_task("test", "limits", context: { v: [fits] })
    end
    cyclic = []
    cyclic << cyclic
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.create_task("test", "limits", context: { v: cyclic }) }
    big = assert_raises(TaskerCore::InvalidArgumentError) do
      @engine.create_task("test", "limits", context: { v: "x" * (1 << 20) })
    end
    assert_includes big.message, "1024 KiB"
    long = assert_raises(TaskerCore::InvalidArgumentError) do
      @engine.create_task("test", "limits", idempotency_key: "k" * 256)
    end
    assert_includes long.message, "256 bytes"
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.claim("w", nil, 1001) }
    budget = assert_raises(TaskerCore::TemplateError) do
      @engine.register_template("namespace: test\nname: budget\nversion: 1.0.0\n" \
                                "steps: [{name: a, retry: {max_attempts: 4294967295}}]\n")
    end
    assert_includes budget.message, "at most 1000"
    assert_equal 1, @engine.list_tasks.size
  end

  def test_higher_priority_tasks_are_claimed_first
    @engine.register_template(template("prio", "a"))
    low = @engine.create_task("test", "prio")
    high = @engine.create_task("test", "prio", priority: 10)
    assert_equal 0, @engine.task(low)["priority"]
    assert_equal 10, @engine.task(high)["priority"]
    assert_equal [high], @engine.claim("w", nil, 1).map { |c| c["task_id"] }
    assert_equal [low], @engine.claim("w", nil, 1).map { |c| c["task_id"] }
  end

  def test_unknown_templates_and_tasks_are_not_found
    assert_raises(TaskerCore::NotFoundError) { @engine.create_task("test", "nope") }
    @engine.register_template(template("known", "a"))
    assert_raises(TaskerCore::NotFoundError) { @engine.create_task("test", "known", version: "9.9.9") }
    bogus = "00000000-0000-4000-8000-000000000000"
    %i[task transitions graph cancel_task pause_task resume_task retry_task].each do |verb|
      assert_raises(TaskerCore::NotFoundError, verb.to_s) { @engine.public_send(verb, bogus) }
    end
  end

  def test_malformed_ids_versions_and_urls_are_invalid_arguments
    @engine.register_template(template("args", "a"))
    %i[task transitions graph cancel_task].each do |verb|
      error = assert_raises(TaskerCore::InvalidArgumentError, verb.to_s) { @engine.public_send(verb, "not-a-task-id") }
      assert_kind_of TaskerCore::Error, error
    end
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.complete("not-a-step-id", 1, {}) }
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.create_task("test", "args", version: "banana") }
    assert_raises(TaskerCore::InvalidArgumentError) { @engine.list_tasks(status: "exploded") }
    assert_raises(TaskerCore::InvalidArgumentError) { TaskerCore::Engine.new("nosuchdb://x") }
  end

  def test_wrong_argument_types_are_type_errors
    @engine.register_template(template("types", "a"))
    assert_raises(TypeError) { @engine.create_task(1, 2) }
    assert_raises(TypeError) { @engine.create_task("test", "types", priority: "high") }
    assert_raises(TypeError) { @engine.task(42) }
    assert_raises(TypeError) { TaskerCore::Engine.new(42) }
    assert_raises(ArgumentError) { @engine.create_task("test", "types", colour: "blue") }
  end

  def test_a_context_that_is_not_json_is_an_invalid_argument
    @engine.register_template(template("notjson", "a"))
    [Object.new, Time.now, "\xff".b, 2**70].each do |bad|
      assert_raises(TaskerCore::InvalidArgumentError, bad.inspect) do
        @engine.create_task("test", "notjson", context: { "value" => bad })
      end
    end
    assert_equal [], @engine.list_tasks
  end

  def test_nan_and_infinity_are_refused_rather_than_stored_as_null
    @engine.register_template(template("finite", "a"))
    [Float::NAN, Float::INFINITY, [1.0, -Float::INFINITY], { "deep" => { "x" => Float::NAN } }].each do |bad|
      assert_raises(TaskerCore::InvalidArgumentError, bad.inspect) do
        @engine.create_task("test", "finite", context: { "value" => bad })
      end
    end
    assert_equal [], @engine.list_tasks
  end

  def test_a_closed_engine_raises_store_error_on_every_call
    @engine.register_template(template("closing", "a"))
    id = @engine.create_task("test", "closing")
    (claimed,) = @engine.claim("w", nil, 1)
    step_id = claimed["step_id"]
    refute @engine.closed?
    @engine.close
    assert @engine.closed?
    @engine.close # closing twice is harmless
    calls = {
      register_template: -> { @engine.register_template(template("x", "a")) },
      create_task: -> { @engine.create_task("test", "closing") },
      claim: -> { @engine.claim("w", nil, 1) },
      complete: -> { @engine.complete(step_id, 1, {}) },
      fail: -> { @engine.fail(step_id, 1, "x") },
      heartbeat: -> { @engine.heartbeat(step_id, 1) },
      task: -> { @engine.task(id) },
      list_tasks: -> { @engine.list_tasks },
      transitions: -> { @engine.transitions(id) },
      graph: -> { @engine.graph(id) },
      cancel_task: -> { @engine.cancel_task(id) },
      pause_task: -> { @engine.pause_task(id) },
      resume_task: -> { @engine.resume_task(id) },
      retry_task: -> { @engine.retry_task(id) },
      resolve_step: -> { @engine.resolve_step(id, "a", {}) },
      subscribe: -> { @engine.subscribe },
      work_status: -> { @engine.work_status },
      reclaim_expired: -> { @engine.reclaim_expired },
      migrate: -> { @engine.migrate }
    }
    calls.each do |verb, call|
      error = assert_raises(TaskerCore::StoreError, verb.to_s) { call.call }
      assert_equal "closed", error.kind, verb.to_s
    end
  end

  def test_migrate_is_idempotent
    @engine.migrate
    @engine.migrate
    @engine.register_template(template("migrated", "a"))
    assert_kind_of String, @engine.create_task("test", "migrated")
  end
end

TaskerTest.on_each_store(EngineBehaviour)

# What does not depend on the store.
class EngineTest < Minitest::Test
  include TaskerTest

  def test_a_sqlite_file_keeps_tasks_across_reopening
    Dir.mktmpdir do |dir|
      url = "sqlite://#{File.join(dir, 'kept.db')}"
      engine = TaskerCore::Engine.new(url)
      engine.register_template(template("kept", "a"))
      id = engine.create_task("test", "kept", context: { kept: true })
      engine.close
      again = TaskerCore::Engine.new(url)
      assert_equal({ "kept" => true }, again.task(id)["context"])
      again.close
    end
  end

  def test_no_url_opens_tasker_db_in_the_working_directory
    Dir.mktmpdir do |dir|
      Dir.chdir(dir) do
        engine = TaskerCore::Engine.new
        engine.register_template(template("default", "a"))
        engine.create_task("test", "default")
        engine.close
        assert File.exist?(File.join(dir, "tasker.db")), Dir.children(dir).inspect
      end
    end
  end

  RAILS = File.read(File.join(ROOT, "tests", "templates", "rails_refund.yml"))

  def test_a_rails_tasker_template_registers_runs_and_hands_its_config_to_handlers
    engine = TaskerCore::Engine.new("memory:", environment: "test")
    summary = engine.register_template(RAILS)
    assert_equal ["rails", "payments", %w[look_up refund]], summary.values_at("format", "namespace", "steps")
    assert(summary["warnings"].any? { |w| w.include?("task_handler_class") }, summary["warnings"].inspect)
    error = assert_raises(TaskerCore::InvalidContextError) do
      engine.create_task("payments", "refund", context: { amount: "five" })
    end
    assert_includes error.message, "/amount"
    assert_operator TaskerCore::InvalidContextError, :<, TaskerCore::InvalidArgumentError
    id = engine.create_task("payments", "refund", context: { amount: 5 })
    seen = Queue.new
    worker = TaskerCore::Worker.new(engine)
    worker.handler("Payments::LookUp") { |step| seen << step.config; { found: true } }
    worker.handler("Payments::Refund") { |step| { config: step.config } }
    worker.run_until_idle(timeout: 30)
    assert_equal "complete", engine.task(id)["status"]
    assert_equal({ "gateway" => "sandbox" }, seen.pop)
    assert_equal({ "config" => {} }, step_of(engine.task(id), "refund")["result"])
  ensure
    engine&.close
  end

  def test_a_template_built_in_code_registers_and_is_checked_as_any_other
    engine = TaskerCore::Engine.new("memory:")
    built = TaskerCore::Template.build("built", :chain, "1.0.0", description: "in code", events: ["x.y"]) do
      step :a, config: { k: 1 }, events: [{ name: "a.done", description: "d" }]
      step :b, depends_on: [:a], retry: { max_attempts: 2 }, handler: :bee
      step :c, depends_on: [{ step: :b, requires_success: false }]
    end
    summary = engine.register_template(built)
    assert_equal [%w[a b c], %w[a bee c]], summary.values_at("steps", "handlers")
    reserved = TaskerCore::Template.build("built", "bad", "1.0.0") { step :a, events: ["task.done"] }
    error = assert_raises(TaskerCore::TemplateError) { engine.register_template(reserved) }
    assert_includes error.message, "engine's own"
    looped = TaskerCore::Template.build("built", "loop", "1.0.0") do
      step :a, depends_on: [:b]
      step :b, depends_on: [:a]
    end
    error = assert_raises(TaskerCore::TemplateError) { engine.register_template(looped) }
    assert_includes error.message, "cycle: a -> b -> a"
    assert_raises(ArgumentError) { TaskerCore::Template.build("x", "y", "1.0.0") { step :a, depend_on: [] } }
  ensure
    engine&.close
  end

  def test_the_error_hierarchy
    assert_operator TaskerCore::Error, :<, StandardError
    %i[TemplateError NotFoundError InvalidTransitionError StoreError InvalidArgumentError].each do |name|
      assert_operator TaskerCore.const_get(name), :<, TaskerCore::Error
    end
    assert_operator TaskerCore::ClaimLostError, :<, TaskerCore::InvalidTransitionError
    # The handler signals are not engine errors.
    [TaskerCore::RetryableError, TaskerCore::PermanentError].each do |signal|
      assert_operator signal, :<, StandardError
      refute_operator signal, :<, TaskerCore::Error
    end
  end

  def test_the_version
    assert_equal "0.1.0", TaskerCore::VERSION
  end

  def test_the_module_engine_accessor
    previous = TaskerCore.engine
    engine = TaskerCore.open("memory:")
    assert_same engine, TaskerCore.engine
    TaskerCore.engine = nil
    assert_nil TaskerCore.engine
    assert_raises(TypeError) { TaskerCore.engine = "memory:" }
    engine.close
  ensure
    TaskerCore.engine = previous
  end

  # Puma preload_app!, Unicorn, Spring: the parent has used the runtime (and a SQLite file)
  # before fork; the child opens its own engine on the file and runs a worker. It used to hang
  # on its first claim (the parent's runtime threads do not exist in the child).
  def test_a_forked_child_opens_its_own_engine_on_a_sqlite_file_and_works
    skip "no fork on this platform" unless Process.respond_to?(:fork)

    dir = Dir.mktmpdir("tasker_core-fork")
    url = "sqlite://#{File.join(dir, 'tasker.db')}"
    parent = TaskerCore::Engine.new(url)
    parent.register_template(template("forked", "a"))
    parent.create_task("test", "forked")
    claimed = parent.claim("parent", nil, 1).first # the runtime and the pool in use before the fork
    parent.complete(claimed["step_id"], claimed["attempt"], "from the parent")
    parent.create_task("test", "forked")
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      inherited = begin
        parent.claim("child", nil, 1)
        "used"
      rescue TaskerCore::StoreError => e
        e.message.include?("fork") ? "refused" : "other: #{e.message}"
      end
      child = TaskerCore::Engine.new(url)
      worker = TaskerCore::Worker.new(child, concurrency: 2)
      worker.handler("a") { |_step| "from the child" }
      counts = worker.run_until_idle(timeout: 20)
      writer.write("#{inherited} #{counts['completed']}")
      writer.close
      exit!(0)
    end
    writer.close
    status = wait_for_child(pid, 60)
    assert status.success?
    assert_equal "refused 1", reader.read
    parent.close
  ensure
    FileUtils.remove_entry(dir) if dir
  end

  # The exit status of child `pid`, which must end within `seconds` (else it is killed and the
  # test fails).
  def wait_for_child(pid, seconds)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      return status unless status.nil?

      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill("KILL", pid)
        flunk "the forked child hung"
      end
      sleep 0.05
    end
  end

  # A worker made before fork and run in the child used to hang there on the parent's runtime.
  def test_a_worker_made_before_a_fork_refuses_to_run_in_the_child
    skip "no fork on this platform" unless Process.respond_to?(:fork)

    parent = TaskerCore::Engine.new("memory:")
    parent.register_template(template("forked", "a"))
    worker = TaskerCore::Worker.new(parent, concurrency: 1)
    worker.handler("a") { |_step| "never" }
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      said = begin
        worker.run_until_idle(timeout: 5)
        "ran"
      rescue TaskerCore::StoreError => e
        e.message.include?("fork") ? "refused" : "other: #{e.message}"
      end
      writer.write(said)
      writer.close
      exit!(0)
    end
    writer.close
    wait_for_child(pid, 30)
    assert_equal "refused", reader.read
    parent.close
  end

  def test_a_forked_child_gets_an_engine_of_its_own_from_the_module_accessor
    skip "no fork on this platform" unless Process.respond_to?(:fork)

    previous = TaskerCore.engine
    parent = TaskerCore.open("memory:")
    parent.register_template(template("forked", "a"))
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      refused = begin
        parent.create_task("test", "forked")
        false
      rescue TaskerCore::StoreError
        true
      end
      writer.write("refused ") if refused
      child = TaskerCore.engine
      child.register_template(template("forked", "a"))
      child.create_task("test", "forked")
      writer.write(child.equal?(parent) ? "same" : "own")
      writer.close
      exit!(0)
    end
    writer.close
    _, status = Process.wait2(pid)
    assert status.success?
    assert_equal "refused own", reader.read
    assert_same parent, TaskerCore.engine
    parent.close
  ensure
    TaskerCore.engine = previous
  end
end
