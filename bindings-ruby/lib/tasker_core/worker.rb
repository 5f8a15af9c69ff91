# frozen_string_literal: true

module TaskerCore
  # Runs registered handlers for the steps an {Engine} hands out. Every decision a worker makes (slots, claim and report batching, lease renewal, timeouts,
  # store back-off, drain, idleness, one run at a time) is the core's ({WorkerRuns},
  # {WorkerSession}). This class is the Ruby glue: +concurrency+ Ruby threads each take the next
  # attempt (without the GVL while they wait), run its handler inside the executor and hand the
  # outcome back; INT and TERM stop a run. A handler cannot be killed: past its step's
  # +timeout_ms+ its attempt is failed ("timed out") and its late return is refused and logged.
  #
  # @example
  #   worker = TaskerCore::Worker.new(engine, concurrency: 4)
  #   worker.handler("charge") do |step|
  #     raise TaskerCore::RetryableError.new("gateway busy", retry_after: 2) if step.attempt == 1
  #     { charged: step.context["order"] }
  #   end
  #   worker.register(ShipHandler)           # a TaskerCore::StepHandler subclass
  #   worker.run_until_idle(timeout: 30)     # => {"completed"=>2, "failed"=>1, "lost"=>0, ...}
  # A handler returns its JSON result (anything else fails the step for good: "result is not
  # JSON-serialisable: …"), or raises {RetryableError} (with its +retry_after+), {PermanentError},
  # or anything else (retryable, "ErrorClass: message", the backtrace logged).
  class Worker
    # The signals that stop {#run} cleanly when it runs in the main thread.
    SIGNALS = %w[INT TERM].freeze

    # @return [Engine] the engine this worker claims from
    attr_reader :engine
    # @return [Integer] how many steps run at once (the number of handler threads)
    attr_reader :concurrency

    # @param engine [Engine]
    # @param concurrency [Integer] how many steps run at once: the number of handler threads
    # @param worker_id [String, nil] the owner recorded on its leases (default +rb-<host>-<pid>-<random>+)
    # @param poll_interval [Numeric] seconds between looks for work made ready elsewhere
    # @param drain_timeout [Numeric] seconds running handlers may take to finish after {#stop}
    #   before their steps are released (pending again, the attempt not counted)
    # @param executor [#wrap, nil] surrounds every handler call; under Rails,
    #   +Rails.application.executor+ (the default there, see {TaskerCore.executor})
    # @raise [TypeError, ArgumentError] for arguments of the wrong type or range
    def initialize(engine, concurrency: 4, worker_id: nil, poll_interval: 0.1, drain_timeout: 30,
                   executor: TaskerCore.executor)
      if !executor.nil? && !executor.respond_to?(:wrap)
        raise TypeError, "executor must respond to wrap (like Rails.application.executor), not #{executor.class}"
      end

      # Checked by the core: TypeError / ArgumentError naming the argument that is wrong.
      @runs = WorkerRuns.new(engine, concurrency, worker_id, poll_interval, drain_timeout)
      @engine = engine
      @concurrency = concurrency
      @executor = executor
      @handlers = {}
      @handlers_lock = Mutex.new
    end

    # @return [String] the id recorded as the owner of this worker's leases
    def worker_id = @runs.worker_id
    # @return [Float] seconds between looks for work made ready elsewhere
    def poll_interval = @runs.poll_interval
    # @return [Boolean] whether {#run} or {#run_until_idle} is under way
    def running? = @runs.running?

    # Registers the block as the handler named +name+ (the template step's +handler:+, which
    # defaults to its name), e.g. +worker.handler("validate") { |step| { valid: true } }+.
    # @return [self]
    # @raise [ArgumentError] without a block, for an empty name or a name registered already
    def handler(name, &block)
      raise ArgumentError, "worker.handler(#{name.inspect}) needs a block: handler(name) { |step| ... }" if block.nil?

      register(name, block)
    end

    # Registers a {StepHandler} subclass under its {StepHandler.handler_name}, or a name with a
    # callable (anything with +call(step)+) or a block: +worker.register(ChargeHandler)+,
    # +worker.register("notify", ->(step) { { notified: true } })+.
    # @return [self]
    # @raise [TypeError] when the handler is not callable or the name not a String/Symbol
    # @raise [ArgumentError] for an empty name or a name registered already
    def register(name_or_handler, handler = nil, &block)
      if name_or_handler.is_a?(String) || name_or_handler.is_a?(Symbol)
        name = name_or_handler.to_s
        raise ArgumentError, "give the handler as an argument or as a block, not both" if handler && block

        callable = handler || block
        raise ArgumentError, "register(#{name.inspect}) needs a handler: a callable or a block" if callable.nil?
      elsif handler.nil? && block.nil? && name_or_handler.respond_to?(:handler_name)
        callable = name_or_handler
        name = callable.handler_name.to_s
      else
        raise TypeError, "register takes a StepHandler subclass, or a handler name (String) with a callable " \
                         "or a block; not #{name_or_handler.class}"
      end
      raise ArgumentError, "a handler name must not be empty" if name.empty?

      check_callable(name, callable)
      @handlers_lock.synchronize do
        raise ArgumentError, "a handler named #{name.inspect} is registered already" if @handlers.key?(name)

        @handlers[name.dup.freeze] = callable
      end
      self
    end

    # Registers the handler classes that templates name (+handler_class+ of a Rails Tasker
    # template, +handler.callable+ of a tasker-core one): each handler name of +templates+ —
    # what {Engine#register_template} returned, or handler names; none: every handler of the
    # engine's templates ({Engine#registered_handlers}) — that names a class with
    # Rails Tasker's +process(task, sequence, step)+ or this engine's +call(step)+ is registered
    # under that name, each step run by a new instance (+new(config: step.config)+ when its
    # +initialize+ takes +config:+). Names registered already and names that are no class are
    # left alone. The Railtie's +tasker_core:work+ calls it.
    #
    # @example
    #   require "tasker_core/compat"   # Tasker::StepHandler::Base and its errors
    #   worker.autoload_handlers(engine.register_template(File.read("order_processing.yaml")))
    # @param templates [Array<Hash, String>] template summaries (their "handlers") or names
    # @return [Array<String>] the names registered
    def autoload_handlers(*templates)
      templates = [@engine.registered_handlers] if templates.empty?
      names = templates.flatten.flat_map do |t|
        t.is_a?(Hash) ? Array(t["handlers"] || t[:handlers]).map(&:to_s) : [t.to_s]
      end
      names.uniq.filter_map do |name|
        next if handlers.include?(name)

        klass = HandlerClass.find(name)
        next if klass.nil?

        register(name, HandlerClass.adapter(klass, @engine))
        name
      end
    end

    # Registers each handler class (e.g. +TaskerCore::StepHandler.registry+).
    # @return [self]
    def register_handlers(classes)
      classes.each { |klass| register(klass) }
      self
    end

    # @return [Array<String>] the names of the registered handlers
    def handlers
      @handlers_lock.synchronize { @handlers.keys }
    end

    # Works until nothing is ready, running or waiting for a retry (for this worker's handlers),
    # or +timeout+ seconds; running handlers then finish and report.
    # @param timeout [Numeric, nil] seconds; nil: no limit
    # @return [Hash{String => Integer, Boolean}] +"completed"+, +"failed"+, +"lost"+ (outcomes
    #   the engine did not record), +"released"+ (steps given back unfinished) and +"idle"+
    # @raise [RuntimeError] without handlers, or while the worker runs already
    def run_until_idle(timeout: nil)
      work(@runs.start(handlers, true, timeout), traps: false)
    end

    # Works until {#stop}, SIGINT or SIGTERM, then drains: no new claims, running handlers finish
    # (up to +drain_timeout+), the rest is released. From the main thread it traps INT and TERM
    # for its duration (an ignored signal stays ignored); a second signal releases at once.
    # @return [Hash{String => Integer, Boolean}] the counts, as {#run_until_idle} returns them
    def run
      work(@runs.start(handlers, false, nil), traps: true)
    end

    # Asks the run to drain and return; asked before a run starts, that run returns at once (the
    # request is used up by the run it ends). Safe from any thread, a handler and a trap.
    # @return [void]
    def stop
      @runs.stop
      nil
    end

    # @!visibility private
    def inspect
      "#<TaskerCore::Worker #{worker_id} concurrency=#{concurrency} handlers=#{handlers.inspect}>"
    end

    private

    def work(session, traps:)
      @signals = 0
      previous = traps ? install_traps(session) : {}
      logger.info { "worker #{worker_id} started: handlers #{handlers.join(', ')}, concurrency #{@concurrency}" }
      handlers = @handlers_lock.synchronize { @handlers.dup.freeze } # the session claims for these
      threads = Array.new(@concurrency) { |i| Thread.new { serve(session, handlers, i) } }
      counts = nil
      counts = session.result(0.2) while counts.nil?
      threads.each { |t| t.join(1) }
      logger.info { "worker #{worker_id} stopped" } if @signals.positive? || !counts["idle"]
      logger.info do
        "worker #{worker_id} finished: #{counts['completed']} completed, #{counts['failed']} failed, " \
          "#{counts['lost']} lost, #{counts['released']} released#{counts['idle'] ? ' (idle)' : ''}"
      end
      counts
    ensure
      # An exception escaped the run (Thread#raise, Timeout, exit): no more claims, and what still
      # runs is let go rather than left to its lease.
      session.abort unless session.finished?
      restore_traps(previous || {})
      @runs.end
    end

    # One handler thread: next attempt, handler, outcome, until the session ends.
    def serve(session, handlers, index)
      Thread.current.name = "tasker_core-#{worker_id}-#{index}"
      loop do
        claimed = session.next(0.5)
        next if claimed.nil? && !session.finished?
        break if claimed.nil?

        step = Step.from_claim(claimed, session)
        refused = begin
          execute(session, handlers[step.handler], step)
        rescue StandardError => e # the thread lives on, and the step is let go
          logger.error { "#{where(step)}: its outcome could not be handed back: #{e.class}: #{e.message}" }
          begin
            session.fail(step.step_id, step.attempt, utf8("its outcome could not be handed back: #{e.message}"), true, nil)
          rescue StandardError => again
            logger.error { "#{where(step)}: could not fail it either: #{again.message}" }
            nil
          end
        end
        logger.warn { "step #{step.name.inspect} (#{step.step_id}) attempt #{step.attempt}: #{refused}" } if refused
      end
    end

    def execute(session, fn, step)
      result = @executor.nil? ? fn.call(step) : @executor.wrap { fn.call(step) }
    rescue RetryableError => e
      logger.info { "#{where(step)} failed, retryable: #{e.message}" }
      session.fail(step.step_id, step.attempt, utf8(e.message), true, e.retry_after)
    rescue PermanentError => e
      logger.warn { "#{where(step)} failed permanently: #{e.message}" }
      session.fail(step.step_id, step.attempt, utf8(e.message), false, nil)
    rescue Exception => e # rubocop:disable Lint/RescueException -- any other error is a retryable failure
      logger.error { "#{where(step)} raised #{e.class}: #{e.message}\n#{(e.backtrace || []).join("\n")}" }
      session.fail(step.step_id, step.attempt, utf8("#{e.class}: #{e.message}"), true, nil)
    else
      session.complete(step.step_id, step.attempt, result) # a result that is not JSON fails for good
    end

    def where(step)
      "step #{step.name.inspect} (#{step.step_id}) attempt #{step.attempt}/#{step.max_attempts}"
    end

    def utf8(text)
      text = text.to_s
      return text.valid_encoding? ? text : text.scrub("?") if text.encoding == Encoding::UTF_8
      return text.dup.force_encoding(Encoding::UTF_8).scrub("?") if text.encoding == Encoding::BINARY

      text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace, replace: "?")
    end

    def check_callable(name, callable)
      unless callable.respond_to?(:call)
        raise TypeError, "the handler #{name.inspect} must respond to call(step), not be a #{callable.class}"
      end
      return if callable.is_a?(Proc) && !callable.lambda? # a block takes what it is given

      arity = callable.is_a?(Proc) || callable.is_a?(Method) ? callable.arity : callable.method(:call).arity
      return if arity == 1 || (arity.negative? && arity >= -2)

      raise ArgumentError, "the handler #{name.inspect} must take one argument (the step), its call takes #{arity}"
    rescue NameError
      nil # call answered through method_missing: nothing to check
    end

    # The first signal drains, the second releases what still runs.
    def install_traps(session)
      return {} unless Thread.current == Thread.main

      SIGNALS.each_with_object({}) do |sig, previous|
        old = Signal.trap(sig) { (@signals += 1) == 1 ? session.stop : session.abort }
        if old.nil? || old == "IGNORE"
          Signal.trap(sig, old) # ignored (nohup, `cmd &`): stays ignored
        else
          previous[sig] = old
        end
      rescue ArgumentError
        next # a signal this platform does not have
      end
    end

    def restore_traps(previous)
      previous.each { |sig, old| Signal.trap(sig, old) }
    end

    def logger
      TaskerCore.logger
    end
  end
end
