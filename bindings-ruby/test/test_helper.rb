# frozen_string_literal: true

require "minitest/autorun"
require "fileutils"
require "json"
require "logger"
require "stringio"
require "securerandom"
require "tmpdir"
require "yaml"

# The gem as it is found: the installed one (CI: `ruby -Itest …`), or this checkout's lib
# (`ruby -Ilib -Itest …`); a checkout without -Ilib and without the gem falls back on lib.
begin
  require "tasker_core"
rescue LoadError
  $LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
  require "tasker_core"
end

# Handler tracebacks and retries are logged on purpose by many tests: keep them out of the
# test output (TASKER_TEST_LOG=1 shows them).
TaskerCore.logger = Logger.new(ENV["TASKER_TEST_LOG"] ? $stderr : IO::NULL, progname: "tasker_core")

# Templates and helpers shared by the tests.
module TaskerTest
  ROOT = File.expand_path("../..", __dir__)
  BINDING = File.expand_path("..", __dir__)
  # The lib directory the tests loaded tasker_core.rb from: child processes load the same.
  LIB = File.dirname($LOADED_FEATURES.find { |f| f.end_with?("/tasker_core.rb") } || File.join(BINDING, "lib", "x"))

  # A template that retries at once (no backoff, no jitter).
  FAST_RETRY = { "max_attempts" => 3, "backoff_base_ms" => 0, "backoff_max_ms" => 0, "jitter" => false }.freeze

  # validate -> (charge, reserve_stock) -> ship -> notify (notify runs even if ship failed).
  DIAMOND = <<~YAML
    namespace: test
    name: diamond
    version: 1.0.0
    steps:
      - name: validate
      - name: charge
        depends_on: [validate]
        retry: { max_attempts: 3, backoff_base_ms: 0, backoff_max_ms: 0, jitter: false }
      - name: reserve_stock
        depends_on: [validate]
      - name: ship
        depends_on: [charge, reserve_stock]
      - name: notify
        depends_on:
          - { step: ship, requires_success: false }
  YAML

  module_function

  # A template Hash with the given steps (each a name or a Hash), retrying at once.
  def template(name, *steps, namespace: "test", version: "1.0.0")
    {
      "namespace" => namespace,
      "name" => name,
      "version" => version,
      "steps" => steps.map do |s|
        s = { "name" => s } if s.is_a?(String)
        { "retry" => FAST_RETRY }.merge(s)
      end
    }
  end

  # The same, as YAML text.
  def yaml_template(name, *steps, **kw)
    YAML.dump(template(name, *steps, **kw))
  end

  # The step named +name+ of a task Hash.
  def step_of(task, name)
    task.fetch("steps").find { |s| s["name"] == name } or raise "no step #{name} in #{task['steps'].map { |s| s['name'] }}"
  end

  # Waits up to +timeout+ seconds for the block to return a truthy value; returns it.
  def wait_for(timeout = 5)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      value = yield
      return value if value
      return nil if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  # The handlers of the DIAMOND template, some replaced by +overrides+ (name => callable).
  def diamond_worker(engine, overrides = {}, **kw)
    handlers = {
      "validate" => ->(step) { { "order" => step.context["order"], "valid" => true } },
      "charge" => ->(step) { { "charged" => true, "order" => step.inputs["validate"]["order"] } },
      "reserve_stock" => ->(_step) { { "reserved" => 1 } },
      "ship" => lambda do |step|
        raise TaskerCore::PermanentError, "unpaid" unless step.inputs["charge"]["charged"] == true

        { "tracking" => "TRK-#{step.context['order']}" }
      end,
      "notify" => ->(step) { { "notified" => true, "shipped" => !step.inputs["ship"].nil? } }
    }.merge(overrides)
    worker = TaskerCore::Worker.new(engine, **kw)
    handlers.each { |name, fn| worker.register(name, fn) }
    worker
  end

  # Runs Ruby code in a child process with the gem's lib on the load path.
  # Returns [stdout, stderr, status].
  def ruby_subprocess(code, *args, env: {}, timeout: 120)
    require "open3"
    Open3.capture3(env, RbConfig.ruby, "-I", LIB, "-e", code, *args, chdir: ROOT)
  end
end

# One test class per store: +TaskerTest.on_each_store(SomeBehaviour)+ defines
# +SomeBehaviourOnMemoryTest+ and +SomeBehaviourOnSqliteTest+, each opening a fresh engine as
# +@engine+ (on "memory:" and on a SQLite file in a temporary directory).
module TaskerTest
  # Setup and teardown of a test class that runs on one store.
  module StoreCase
    include TaskerTest

    def setup
      super
      @tmpdir = Dir.mktmpdir("tasker_core-test")
      @engine = TaskerCore::Engine.new(store_url)
    end

    def teardown
      @engine.close if @engine && !@engine.closed?
      FileUtils.remove_entry(@tmpdir) if @tmpdir
      super
    end

    # A second engine on the same store (a fresh one for "memory:").
    def store_url
      self.class.store == :memory ? "memory:" : "sqlite://#{File.join(@tmpdir, 'tasker.db')}"
    end

    def sqlite?
      self.class.store == :sqlite
    end
  end

  STORES = { "Memory" => :memory, "Sqlite" => :sqlite }.freeze

  def self.on_each_store(behaviour)
    STORES.each do |label, store|
      klass = Class.new(Minitest::Test) do
        include StoreCase
        include behaviour

        define_singleton_method(:store) { store }
      end
      Object.const_set("#{behaviour.name}On#{label}Test", klass)
    end
  end
end

module TaskerTest
  # A fresh schema on the server of +TASKER_TEST_POSTGRES_URL+ (the test command starts one),
  # or nil without it; {drop_postgres_schema} drops it.
  # @return [Array(String, String), nil] the engine URL and the schema
  def self.postgres_schema
    base = ENV["TASKER_TEST_POSTGRES_URL"]
    return nil if base.nil? || base.empty?

    schema = "tasker_test_rb_#{SecureRandom.hex(16)}"
    system("psql", "-q", base, "-c", "CREATE SCHEMA #{schema}", exception: true)
    ["#{base}#{base.include?('?') ? '&' : '?'}options=-c%20search_path%3D#{schema}", schema]
  end

  def self.drop_postgres_schema(schema)
    system("psql", "-q", ENV.fetch("TASKER_TEST_POSTGRES_URL"), "-c", "DROP SCHEMA #{schema} CASCADE",
           out: File::NULL, err: File::NULL)
  end

  # +tests/support/outage_proxy.py+ in front of the PostgreSQL server of a URL (the program
  # every language's conformance suite starts): {#cut} takes it down for +down_for+ seconds.
  class OutageProxy
    # @return [String] the URL through the proxy
    attr_reader :url

    def initialize(url, down_for)
      require "open3"
      script = File.join(ROOT, "tests/support/outage_proxy.py")
      @stdin, @stdout, @thread = Open3.popen2("python3", script, url, down_for.to_s)
      pid, @url = @stdout.gets.split
      @pid = Integer(pid)
    end

    # Takes the proxy down, and returns once it is down (it says so on its stdout).
    def cut
      Process.kill("USR1", @pid)
      line = @stdout.gets
      raise "the proxy said #{line.inspect}, not down" unless line&.strip == "down"
    end

    # Stops the proxy. @return [Array(Integer, Integer)] the connections it cut and refused
    def finish
      @stdin.close
      counts = @stdout.read.scan(/(\w+)=(\d+)/).to_h
      @thread.join
      [Integer(counts.fetch("cut")), Integer(counts.fetch("refused"))]
    end

    def kill
      Process.kill("KILL", @pid) if @thread.alive?
    rescue Errno::ESRCH
      nil
    end
  end
end
