# frozen_string_literal: true

require "logger"

require_relative "tasker_core/version"
require "tasker_core/tasker_core_native"
require_relative "tasker_core/errors"
require_relative "tasker_core/decision"
require_relative "tasker_core/batch"
require_relative "tasker_core/children"
require_relative "tasker_core/step"
require_relative "tasker_core/step_handler"
require_relative "tasker_core/handler_class"
require_relative "tasker_core/template"
require_relative "tasker_core/worker"
# Loaded on first use: net/http only for apps that mount the dashboard.
module TaskerCore
  autoload :Dashboard, File.expand_path("tasker_core/dashboard", __dir__)
end

# Tasker Core: workflow orchestration with a Rust core.
#
# A *task* is one run of a *template*: a DAG of *steps*. The engine (written in Rust, in the
# +tasker_core/tasker_core_native+ extension) decides which steps are ready, hands them out
# with a lease, retries failures with backoff, records every state change and publishes
# lifecycle events. This gem adds what belongs to Ruby: the {TaskerCore::Worker} that runs your
# handlers on Ruby threads, the {TaskerCore::Step} they receive, {TaskerCore::StepHandler} for
# handlers written as classes, the two handler signals {TaskerCore::RetryableError} and
# {TaskerCore::PermanentError}, and a Railtie for Rails applications.
#
# @example
#   require "tasker_core"
#
#   engine = TaskerCore::Engine.new("memory:")        # "sqlite:///var/app/tasker.db", "postgres://…"
#   engine.register_template(<<~YAML)
#     namespace: demo
#     name: hello
#     version: 1.0.0
#     steps: [{ name: greet }]
#   YAML
#   id = engine.create_task("demo", "hello", context: { who: "world" })
#   worker = TaskerCore::Worker.new(engine, concurrency: 2)
#   worker.handler("greet") { |step| { greeting: "hello #{step.context['who']}" } }
#   worker.run_until_idle(timeout: 10)                # => {"completed"=>1, "failed"=>0, "lost"=>0, "idle"=>true}
#   engine.task(id)["status"]                         # => "complete"
#   engine.close
#
# The native extension defines {TaskerCore::Engine}, {TaskerCore::Subscription} and the error
# classes: {TaskerCore::Error} (< StandardError) with +TemplateError+, +NotFoundError+,
# +InvalidTransitionError+ (and its +ClaimLostError+), +StoreError+ and +InvalidArgumentError+
# (and its +IdempotencyConflictError+: an idempotency key seen before, for another context).
module TaskerCore
  @engine = nil
  @engine_pid = nil
  @engine_url = nil
  @engine_lock = Mutex.new
  @logger = nil
  @executor = nil
  @after_fork = []

  class << self
    # The application's engine, when one is set ({engine=}, {open}, or the Railtie's
    # initializer under Rails).
    #
    # An engine opened with {open} is opened again, with the same URL, the first time it is
    # asked for in a forked child (the parent's engine and its threads do not survive a fork):
    # preforking servers and job runners get an engine of their own in each process.
    #
    # @return [Engine, nil]
    def engine
      @engine_lock.synchronize do
        if !@engine.nil? && @engine_pid != Process.pid && !@engine_url.nil?
          @engine = Engine.new(@engine_url)
          @engine_pid = Process.pid
          @after_fork.each { |hook| hook.call(@engine) }
        end
        @engine
      end
    end

    # Sets the application's engine (it is not reopened after a fork: see {open}).
    #
    # @param engine [Engine, nil]
    def engine=(engine)
      unless engine.nil? || engine.is_a?(Engine)
        raise TypeError, "TaskerCore.engine must be a TaskerCore::Engine or nil, not #{engine.class}"
      end

      @engine_lock.synchronize do
        @engine = engine
        @engine_pid = Process.pid
        @engine_url = nil
      end
    end

    # Opens an engine on +url+ and makes it {engine}.
    #
    # @param url [String, nil] "memory:", "sqlite:///path.db", "postgres://…"; nil: +sqlite://tasker.db+
    # @return [Engine]
    def open(url = nil)
      engine = url.nil? ? Engine.new : Engine.new(url)
      @engine_lock.synchronize do
        @engine = engine
        @engine_pid = Process.pid
        @engine_url = url
      end
      engine
    end

    # @!visibility private
    # Runs the block with the new engine when {engine} reopens it in a forked child.
    def after_fork(&hook)
      @engine_lock.synchronize { @after_fork << hook }
    end

    # Where the gem logs: what {logger=} set, else +Rails.logger+ under Rails, else a Logger
    # on $stderr (progname "tasker_core", level WARN; INFO shows workers starting and stopping
    # and retryable failures, DEBUG each claim and completion).
    #
    # @return [Logger]
    def logger
      return @logger unless @logger.nil?
      return ::Rails.logger if defined?(::Rails) && ::Rails.respond_to?(:logger) && !::Rails.logger.nil?

      @default_logger ||= Logger.new($stderr, progname: "tasker_core", level: Logger::WARN)
    end

    # @param logger [Logger, nil] nil: back to the default
    attr_writer :logger

    # The default +executor:+ of new workers: an object whose +wrap { }+ surrounds every
    # handler call. The Railtie sets +Rails.application.executor+, so that handlers check
    # their database connections back in and see the Rails executor's hooks.
    #
    # @return [#wrap, nil]
    attr_accessor :executor
  end
end

require_relative "tasker_core/railtie" if defined?(Rails::Railtie)
