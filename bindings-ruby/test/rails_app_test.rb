# frozen_string_literal: true

require_relative "test_helper"
require "open3"

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
end
