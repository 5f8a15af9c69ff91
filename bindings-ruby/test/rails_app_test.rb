# frozen_string_literal: true

require_relative "test_helper"
require "open3"
require "io/wait"

# The Railtie in a minimal Rails application, booted in a child process so that Rails stays
# out of the other tests. Skipped when Rails is not installed (Debian: ruby-railties).
class RailsAppTest < Minitest::Test
  include TaskerTest

  RAILS_AVAILABLE = begin
    _, _, status = Open3.capture3(RbConfig.ruby, "-e", 'require "rails"')
    status.success?
  end

  TEMPLATE = <<~YAML
    namespace: rails
    name: greeting
    version: 1.0.0
    steps:
      - name: greet
      - name: shout
        depends_on: [greet]
  YAML

  HANDLERS = <<~RUBY
    class GreetHandler < TaskerCore::StepHandler
      def call(step)
        { "greeting" => "hello \#{step.context['who']}" }
      end
    end
  RUBY

  SHOUT_HANDLER = <<~RUBY
    class ShoutHandler < TaskerCore::StepHandler
      def call(step)
        step.inputs["greet"]["greeting"].upcase
      end
    end
  RUBY

  # A Rails Tasker template, and its handler classes written the Rails Tasker way.
  REFUND_TEMPLATE = <<~YAML
    name: refund
    namespace_name: payments
    version: 1.0.0
    task_handler_class: RefundTask
    schema: {type: object, required: [amount], properties: {amount: {type: integer}}}
    step_templates:
      - name: look_up
        handler_class: Payments::LookUpHandler
        handler_config: {gateway: stripe}
      - name: refund
        handler_class: Payments::RefundHandler
        depends_on_step: look_up
        default_retry_limit: 3
        custom_events:
          - name: refund.issued
            description: the money went back
  YAML

  LOOK_UP_HANDLER = <<~RUBY
    module Payments
      class LookUpHandler < Tasker::StepHandler::Base
        def process(task, _sequence, _step)
          { "charge" => "ch_\#{task.context['amount']}", "gateway" => config["gateway"] }
        end
      end
    end
  RUBY

  REFUND_HANDLER = <<~RUBY
    module Payments
      class RefundHandler < Tasker::StepHandler::Base
        def process(task, sequence, step)
          raise Tasker::RetryableError.new("rate limited", retry_after: 0) if step.attempts == 1

          charge = sequence.steps.find { |s| s.name == "look_up" }.results["charge"]
          publish_custom_event("refund.issued", { "charge" => charge })
          refused = begin
            publish_custom_event("refund.lost", {})
            false
          rescue TaskerCore::InvalidArgumentError
            true
          end
          { "refunded" => charge, "amount" => task.context["amount"], "undeclared_refused" => refused }
        end

        def process_results(step, output, _initial_results)
          step.results = output.merge("shaped" => true)
        end
      end
    end
  RUBY

  APP = <<~'RUBY'
    root = ARGV.fetch(0)
    require "rails"
    require "rake"
    require "tasker_core"
    fail "the Railtie was not loaded" unless defined?(TaskerCore::Railtie)

    app = Class.new(Rails::Application) do
      config.root = root
      config.eager_load = false
      config.logger = Logger.new(File.join(root, "log.txt"))
      config.secret_key_base = "tasker_core-test"
      config.tasker_core.database_url = "memory:"
    end
    received = Queue.new
    ActiveSupport::Notifications.subscribe(/\.tasker_core\z/) do |name, _start, _finish, _id, payload|
      received << [name, payload]
    end
    Rails.application.initialize!

    engine = TaskerCore.engine
    fail "TaskerCore.engine is not an engine: #{engine.inspect}" unless engine.is_a?(TaskerCore::Engine)
    fail "database_url: #{Rails.application.config.tasker_core.database_url}" unless Rails.application.config.tasker_core.database_url == "memory:"
    fail "concurrency default: #{app.config.tasker_core.concurrency}" unless app.config.tasker_core.concurrency == 4
    fail "the executor is not Rails'" unless TaskerCore.executor.equal?(Rails.application.executor)

    # The template of config/tasker/templates was registered.
    id = engine.create_task("rails", "greeting", context: { who: "rails" })

    # Handler classes under app/handlers are autoloaded: eager-load them as the rake task does.
    Rails.application.eager_load!
    names = TaskerCore::StepHandler.registry.map(&:handler_name)
    fail "handlers found: #{names}" unless (%w[greet shout] - names).empty?

    worker = TaskerCore::Worker.new(engine, concurrency: app.config.tasker_core.concurrency)
    worker.register_handlers(TaskerCore::StepHandler.registry)
    counts = worker.run_until_idle(timeout: 30)
    task = engine.task(id)
    fail "the task ended #{task['status']} (#{counts})" unless task["status"] == "complete"
    shout = task["steps"].find { |s| s["name"] == "shout" }
    fail "shout: #{shout['result'].inspect}" unless shout["result"] == "HELLO RAILS"

    # Every engine event is instrumented as "<name>.tasker_core", from a background thread.
    seen = []
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until seen.include?("task.completed.tasker_core") || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      begin
        name, payload = received.pop(true)
        seen << name
        fail "payload of #{name}: #{payload.inspect}" unless payload["task_id"] == id && "#{payload['name']}.tasker_core" == name
      rescue ThreadError
        sleep 0.02
      end
    end
    fail "notifications seen: #{seen}" unless seen.include?("task.completed.tasker_core")
    fail "no step notifications: #{seen}" unless seen.include?("step.completed.tasker_core")

    # The rake tasks.
    Rails.application.load_tasks
    fail "no tasker_core:work task" unless Rake::Task.task_defined?("tasker_core:work")
    Rake::Task["tasker_core:work"]
    status_out = StringIO.new
    $stdout = status_out
    begin
      Rake::Task["tasker_core:status"].invoke
    ensure
      $stdout = STDOUT
    end
    fail "tasker_core:status printed #{status_out.string.inspect}" unless status_out.string =~ /complete\s+1\b/

    # Rails Tasker templates and handler classes, unchanged: the classes the templates name
    # are found (autoloaded from app/handlers) and run.
    refunds = TaskerCore::Worker.new(engine)
    found = refunds.autoload_handlers
    fail "autoloaded: #{found}" unless found.sort == %w[Payments::LookUpHandler Payments::RefundHandler]
    begin
      engine.create_task("payments", "refund", context: { amount: "twelve" })
      fail "a context breaking the schema was accepted"
    rescue TaskerCore::InvalidContextError => e
      fail "the error does not name the path: #{e.message}" unless e.message.include?("/amount")
    end
    refund_id = engine.create_task("payments", "refund", context: { amount: 12 })
    counts = refunds.run_until_idle(timeout: 30)
    refund = engine.task(refund_id)
    fail "the refund ended #{refund['status']} (#{counts})" unless refund["status"] == "complete"
    look_up, paid = refund["steps"]
    fail "look_up: #{look_up['result'].inspect}" unless look_up["result"] == { "charge" => "ch_12", "gateway" => "stripe" }
    want = { "refunded" => "ch_12", "amount" => 12, "undeclared_refused" => true, "shaped" => true }
    fail "refund: #{paid['result'].inspect} after #{paid['attempts']}" unless paid["result"] == want && paid["attempts"] == 2

    # The custom event the template declares reached ActiveSupport::Notifications.
    issued = nil
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    until issued || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      begin
        name, payload = received.pop(true)
        issued = payload if name == "refund.issued.tasker_core"
      rescue ThreadError
        sleep 0.02
      end
    end
    fail "no refund.issued.tasker_core notification" if issued.nil?
    unless issued["detail"] == { "charge" => "ch_12" } && issued["task_id"] == refund_id &&
           issued["step_name"] == "refund" && issued["attempt"] == 2
      fail "refund.issued: #{issued.inspect}"
    end

    # A template that is not valid names its file.
    File.write(File.join(root, "config", "tasker", "templates", "zz_broken.yml"), "namespace: x\nname: y\nversion: 1.0.0\nsteps: []\n")
    begin
      TaskerCore::Railtie.load_templates(engine, TaskerCore::Railtie.templates_dir(app))
      fail "a broken template was accepted"
    rescue TaskerCore::TemplateError => e
      fail "the error does not name the file: #{e.message}" unless e.message.include?("zz_broken.yml")
    end

    engine.close
    puts "OK"
  RUBY

  def test_a_rails_application_loads_templates_runs_handlers_and_instruments_events
    skip 'Rails is not installed (require "rails" failed); apt-get install ruby-railties' unless RAILS_AVAILABLE

    Dir.mktmpdir("tasker_core-rails") do |root|
      FileUtils.mkdir_p(File.join(root, "config", "tasker", "templates"))
      FileUtils.mkdir_p(File.join(root, "app", "handlers"))
      File.write(File.join(root, "config", "tasker", "templates", "x.yml"), TEMPLATE)
      File.write(File.join(root, "app", "handlers", "greet_handler.rb"), HANDLERS)
      File.write(File.join(root, "app", "handlers", "shout_handler.rb"), SHOUT_HANDLER)
      File.write(File.join(root, "config", "tasker", "templates", "refund.yml"), REFUND_TEMPLATE)
      FileUtils.mkdir_p(File.join(root, "app", "handlers", "payments"))
      File.write(File.join(root, "app", "handlers", "payments", "look_up_handler.rb"), LOOK_UP_HANDLER)
      File.write(File.join(root, "app", "handlers", "payments", "refund_handler.rb"), REFUND_HANDLER)
      out, err, status = Open3.capture3({ "TASKER_DATABASE_URL" => nil, "RAILS_ENV" => "test" },
                                        RbConfig.ruby, "-I", TaskerTest::LIB, "-e", APP, root, chdir: root)
      assert status.success?, "the Rails app failed:\n#{out}\n#{err}"
      assert_equal "OK", out.lines.last&.chomp, "#{out}\n#{err}"
    end
  end

  def test_the_default_database_url_is_a_sqlite_file_under_db
    skip 'Rails is not installed (require "rails" failed); apt-get install ruby-railties' unless RAILS_AVAILABLE

    code = <<~'RUBY'
      root = ARGV.fetch(0)
      require "rails"
      require "tasker_core"
      Class.new(Rails::Application) do
        config.root = root
        config.eager_load = false
        config.logger = Logger.new(IO::NULL)
        config.secret_key_base = "tasker_core-test"
      end
      Rails.application.initialize!
      puts Rails.application.config.tasker_core.database_url
      puts File.exist?(File.join(root, "db", "tasker_core_test.sqlite3"))
    RUBY
    Dir.mktmpdir("tasker_core-rails") do |root|
      out, err, status = Open3.capture3({ "TASKER_DATABASE_URL" => nil, "RAILS_ENV" => "test" },
                                        RbConfig.ruby, "-I", TaskerTest::LIB, "-e", code, root, chdir: root)
      assert status.success?, err
      url, exists = out.lines.map(&:chomp).last(2)
      assert_equal "sqlite://#{File.realpath(root)}/db/tasker_core_test.sqlite3", url.sub(root, File.realpath(root))
      assert_equal "true", exists

      out, err, status = Open3.capture3({ "TASKER_DATABASE_URL" => "memory:", "RAILS_ENV" => "test" },
                                        RbConfig.ruby, "-I", TaskerTest::LIB, "-e", code, root, chdir: root)
      assert status.success?, err
      assert_equal "memory:", out.lines[-2].chomp
    end
  end

  # A Rails app of a SQLite file, with the dashboard mounted at /tasker: shared by the process
  # that runs `rake tasker_core:dashboard` and the one that asks the app for the pages.
  DASHBOARD_APP = <<~'RUBY'
    require "rails"
    # Routing and the middleware a Rails app serves requests with.
    require "action_controller/railtie"
    require "rake"
    require "tasker_core"
    root = ENV.fetch("APP_ROOT")
    Class.new(Rails::Application) do
      config.root = root
      config.eager_load = false
      config.logger = Logger.new(File.join(root, "log.txt"))
      config.secret_key_base = "tasker_core-test"
      config.hosts.clear
      config.tasker_core.database_url = "sqlite://#{root}/tasker.db"
    end
    Rails.application.initialize!
    Rails.application.routes.draw do
      mount TaskerCore::Dashboard.new(upstream: ENV.fetch("DASHBOARD", "http://127.0.0.1:9")), at: "/tasker"
    end
  RUBY

  DASHBOARD_CHECKS = <<~'RUBY'
    require "./app"
    engine = TaskerCore.engine
    id = engine.create_task("rails", "greeting", context: { who: "ops" })
    app = Rack::MockRequest.new(Rails.application)
    own = { "HTTP_HOST" => "app.example", "HTTP_ORIGIN" => "http://app.example" }

    list = app.get("/tasker", "HTTP_HOST" => "app.example")
    fail "list: #{list.status} #{list.body[0, 300]}" unless list.status == 200 && list.body.include?(%(href="/tasker/tasks/#{id}"))
    page = app.get("/tasker/tasks/#{id}", "HTTP_HOST" => "app.example")
    fail "page: #{page.status}" unless page.status == 200 && page.body.include?("<svg") && page.body.include?('data-step="shout"')
    fail "content type: #{page.content_type}" unless page.content_type.to_s.start_with?("text/html")
    csrf = page.body[/name="csrf" value="([0-9a-f]+)"/, 1]
    fail "no CSRF value on the page" if csrf.nil?

    # The page's own form, without the token: refused; with it: paused, back to the page.
    form = "application/x-www-form-urlencoded"
    r = app.post("/tasker/tasks/#{id}/pause", own.merge("CONTENT_TYPE" => form, input: "csrf=#{csrf}&token="))
    fail "without the token: #{r.status}" unless r.status == 401
    fail "paused without the token" unless engine.task(id)["status"] == "pending"
    r = app.post("/tasker/tasks/#{id}/pause", own.merge("CONTENT_TYPE" => form, input: "csrf=#{csrf}&token=tok-3"))
    fail "with the token: #{r.status} #{r.body[0, 300]}" unless r.status == 303 && r.location == "/tasker/tasks/#{id}"
    fail "not paused: #{engine.task(id)['status']}" unless engine.task(id)["status"] == "paused"

    # Another site's page is refused even with the token; a client with the Bearer header acts.
    r = app.post("/tasker/tasks/#{id}/cancel", own.merge("HTTP_ORIGIN" => "http://evil.example", "HTTP_AUTHORIZATION" => "Bearer tok-3"))
    fail "cross-site: #{r.status}" unless r.status == 403
    r = app.post("/tasker/tasks/#{id}/cancel", own.merge("HTTP_AUTHORIZATION" => "Bearer tok-3"))
    fail "bearer: #{r.status}" unless r.status == 303
    fail "not cancelled: #{engine.task(id)['status']}" unless engine.task(id)["status"] == "cancelled"
    r = app.request("DELETE", "/tasker/tasks/#{id}", own)
    fail "DELETE: #{r.status} #{r.headers.inspect}" unless r.status == 405 && r.headers["allow"] == "GET, HEAD, POST"
    # A body far over any form's size is refused here, not buffered and passed on.
    r = app.post("/tasker/tasks/#{id}/retry", own.merge("CONTENT_TYPE" => form, input: "csrf=#{csrf}&token=tok-3&x=#{'a' * 100_000}"))
    fail "a 100 kB body: #{r.status}" unless r.status == 413

    # A dashboard that is not running, and an upstream that is not a URL.
    down = Rack::MockRequest.new(TaskerCore::Dashboard.new(upstream: "http://127.0.0.1:9", open_timeout: 1))
    r = down.get("/tasker")
    fail "down: #{r.status} #{r.body}" unless r.status == 502 && r.body.include?("tasker_core:dashboard")
    begin
      TaskerCore::Dashboard.new(upstream: "ftp://example")
      fail "an ftp upstream was taken"
    rescue ArgumentError => e
      fail e.message unless e.message.include?("ftp://example")
    end
    puts "OK"
  RUBY

  def test_the_dashboard_is_mounted_in_a_rails_app_and_started_by_rake
    skip 'Rails is not installed (require "rails" failed); apt-get install ruby-railties' unless RAILS_AVAILABLE

    bin = ENV["TASKER_BIN"] || File.join(TaskerTest::ROOT, "target", "debug", "tasker")
    unless File.executable?(bin)
      flunk "TASKER_BIN=#{bin} is not an executable" if ENV["TASKER_BIN"]
      skip "no tasker binary at #{bin} (cargo build -p tasker-cli, or set TASKER_BIN)"
    end
    Dir.mktmpdir("tasker_core-dashboard") do |root|
      FileUtils.mkdir_p(File.join(root, "config", "tasker", "templates"))
      File.write(File.join(root, "config", "tasker", "templates", "greeting.yml"), TEMPLATE)
      File.write(File.join(root, "app.rb"), DASHBOARD_APP)
      env = { "APP_ROOT" => root, "RAILS_ENV" => "test", "TASKER_DATABASE_URL" => nil }
      serve = <<~'RUBY'
        require "./app"
        Rails.application.load_tasks
        Rake::Task["tasker_core:dashboard"].invoke
      RUBY
      stdin, stdout, stderr, thread = Open3.popen3(
        env.merge("BIND" => "127.0.0.1:0", "TASKER_TOKEN" => "tok-3", "TASKER_BIN" => bin),
        RbConfig.ruby, "-I", TaskerTest::LIB, "-e", serve, chdir: root
      )
      begin
        stdin.close
        # The first line, or nothing after 60 s (a dashboard that never starts fails the test
        # rather than hanging it).
        line = stdout.wait_readable(60) ? stdout.gets.to_s : ""
        assert_match %r{\Alistening on http://127\.0\.0\.1:\d+/tasker\n\z}, line,
                     "rake tasker_core:dashboard said #{line.inspect}: #{stderr.read_nonblock(4096, exception: false)}"
        upstream = line[%r{http://[^/]+}]
        out, err, status = Open3.capture3(env.merge("DASHBOARD" => upstream),
                                          RbConfig.ruby, "-I", TaskerTest::LIB, "-e", DASHBOARD_CHECKS, chdir: root)
        assert status.success?, "the mounted dashboard failed:\n#{out}\n#{err}"
        assert_equal "OK", out.lines.last&.chomp, "#{out}\n#{err}"
      ensure
        Process.kill("KILL", thread.pid) rescue nil # rubocop:disable Style/RescueModifier
        thread.join
        [stdout, stderr].each(&:close)
      end

      # An in-memory store cannot be seen from another process: the task says so.
      memory = <<~'RUBY'
        require "./app"
        Rails.application.config.tasker_core.database_url = "memory:"
        Rails.application.load_tasks
        Rake::Task["tasker_core:dashboard"].invoke
      RUBY
      _, err, status = Open3.capture3(env.merge("TASKER_BIN" => bin), RbConfig.ruby, "-I", TaskerTest::LIB, "-e", memory, chdir: root)
      refute status.success?
      assert_includes err, "cannot see the in-memory store"
    end
  end
end
